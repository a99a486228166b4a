"""C2PA content credentials: a manifest saying the file was made by a trained model, signed into the file.

c2pa-python (the C2PA reference SDK's binding) builds and signs it with the operator's certificate chain and
key (PEM), or with a chain made at start-up, which validators report as untrusted. Thumbnails are off: the
SDK's default thumbnail made a 197 KB PNG 812 KB, and an input picture is an ingredient by hash, not by bytes.
"""

from __future__ import annotations

import datetime
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

CREATED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
EDITED = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
SDK_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}
GENERATED_NAME = "kserve-diffusion (self-signed at start-up, untrusted)"


@dataclass(frozen=True)
class SigningIdentity:
    """A PEM certificate chain (leaf first), its private key, and the C2PA algorithm the key signs with."""

    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    algorithm: str = "es256"
    generated: bool = False


@dataclass(frozen=True)
class Ingredient:
    """An input picture, named in the manifest by its SHA-256 (its bytes stay out of the file)."""

    title: str  # the request field it came in (image, mask, images[1], ...)
    sha256: str
    mime: str
    relationship: str  # parentOf (the picture edited), componentOf (more pictures), inputTo (a mask)


def ingredient(title: str, data: bytes, relationship: str) -> Ingredient:
    """An input file as an ingredient: its SHA-256 and its type (read from its header)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as picture:
            mime = picture.get_format_mimetype() or "application/octet-stream"
    except Exception:  # decoding it reports the problem; the hash is what matters here
        mime = "application/octet-stream"
    return Ingredient(title, hashlib.sha256(data).hexdigest(), mime, relationship)


def generated_identity(common_name: str = GENERATED_NAME) -> SigningIdentity:
    """An ES256 leaf signed by a CA made here: signatures validate, and validators call the signer untrusted."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def usage(signs_certificates: bool) -> x509.KeyUsage:
        return x509.KeyUsage(True, False, False, False, False, signs_certificates, signs_certificates, False, False)

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    valid = {
        "not_valid_before": now - datetime.timedelta(days=1),
        "not_valid_after": now + datetime.timedelta(days=365),
    }
    ca = (
        x509.CertificateBuilder(subject_name=name(common_name + " CA"), issuer_name=name(common_name + " CA"), **valid)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder(subject_name=name(common_name), issuer_name=ca.subject, **valid)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + ca.public_bytes(pem)
    key = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return SigningIdentity(chain, key, "es256", generated=True)


def _algorithm(key: Any) -> str:
    """The C2PA signing algorithm of a private key, or a ConfigError naming --c2pa_key."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in curves:
            return curves[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise ConfigError(
        f"--c2pa_key: C2PA signs with EC P-256/384/521, RSA (PS256) or Ed25519 keys, got {type(key).__name__}"
    )


def load_identity(cert_path: str, key_path: str) -> SigningIdentity:
    """The operator's chain and key from PEM files; anything unreadable is a ConfigError naming the flag."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def read(flag: str, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {path[:200]!r}: {exc.strerror or exc}") from None

    chain_pem, key_pem = read("--c2pa_cert", cert_path), read("--c2pa_key", key_path)
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ConfigError(
            f"--c2pa_cert: {cert_path[:200]!r} holds no PEM certificate (the leaf first, then its CAs)"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted: give an unencrypted key" if isinstance(exc, TypeError) else "not a PEM private key"
        raise ConfigError(f"--c2pa_key: {key_path[:200]!r}: {reason}") from None
    if chain[0].public_key().public_numbers() != key.public_key().public_numbers():
        raise ConfigError("--c2pa_key: the key does not belong to the first (leaf) certificate of --c2pa_cert")
    return SigningIdentity(chain_pem, key_pem, _algorithm(key))


def manifest(
    title: str,
    claim: dict[str, Any],
    ingredients: Sequence[Ingredient] = (),
) -> dict[str, Any]:
    """The manifest of one file: `claim` (generator, model, family, optional seed) plus its ingredients.

    Made from a prompt alone it was c2pa.created from trained algorithmic media; from input pictures it was
    c2pa.opened (the parent picture) then c2pa.edited into a composite with trained algorithmic media: C2PA 2
    wants a created or opened action first."""
    agent = claim["generator"]
    parameters = {key: claim[key] for key in ("model", "family", "task", "seed") if key in claim}
    actions: list[dict[str, Any]] = []
    definition: dict[str, Any] = {"claim_generator_info": [agent], "title": title}
    if ingredients:
        definition["ingredients"] = [
            {
                "title": item.title,
                "format": item.mime,
                "relationship": item.relationship,
                "instance_id": f"sha256:{item.sha256}",
                "label": f"ingredient{index}",
            }
            for index, item in enumerate(ingredients)
        ]
        parents = [f"ingredient{index}" for index, item in enumerate(ingredients) if item.relationship == "parentOf"]
        actions.append({"action": "c2pa.opened", "parameters": {"ingredientIds": parents}})
    actions.append(
        {
            "action": "c2pa.edited" if ingredients else "c2pa.created",
            "digitalSourceType": EDITED if ingredients else CREATED,
            "softwareAgent": agent,
            "description": f"{claim['task']} by the {claim['family']} model {claim['model']!r}",
            "parameters": parameters,
        }
    )
    definition["assertions"] = [{"label": "c2pa.actions.v2", "data": {"actions": actions}}]
    return definition


class CredentialSigner:
    """Signs files with one identity; a Builder per file, so the encode threads sign side by side."""

    def __init__(self, identity: SigningIdentity, tsa_url: str | None = None) -> None:
        import c2pa

        self._c2pa = c2pa
        self.identity = identity
        info = c2pa.C2paSignerInfo(identity.algorithm.encode(), identity.chain_pem, identity.key_pem, tsa_url)
        self.signer = c2pa.Signer.from_info(info)
        self.context = c2pa.Context.from_dict(SDK_SETTINGS)

    def sign(self, data: bytes, mime: str, definition: dict[str, Any]) -> bytes:
        """`data` (a file of type `mime`) with the signed manifest embedded."""
        signed = io.BytesIO()
        with self._c2pa.Builder(definition, self.context) as builder:
            builder.sign(self.signer, mime, io.BytesIO(data), signed)
        return signed.getvalue()
