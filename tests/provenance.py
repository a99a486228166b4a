"""Test helpers for the output marks: a test CA and signing leaf, C2PA manifests read with c2pa.Reader, the
watermark read with invisible-watermark's decoder."""

from __future__ import annotations

import datetime
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import c2pa
import numpy as np
from kserve_diffusion.marks import watermark
from PIL import Image

LEAF_NAME = "kserve-diffusion test signer"
CREATED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
EDITED = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
GENERATED = "self-signed at start-up"  # in the common name of the certificate made at start-up
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4", "gif": "image/gif"}


def write_chain(folder: Path) -> tuple[Path, Path]:
    """A test CA and an ES256 leaf it signed (digitalSignature, emailProtection): (chain PEM, key PEM) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    span = {"not_valid_before": now - datetime.timedelta(hours=1), "not_valid_after": now + datetime.timedelta(days=30)}

    def name(text: str) -> x509.Name:
        return x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, text), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tests")]
        )

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder(subject_name=name("Test CA"), issuer_name=name("Test CA"), **span)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder(subject_name=name(LEAF_NAME), issuer_name=ca.subject, **span)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain, key = folder / "chain.pem", folder / "signer.key"
    chain.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key.write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return chain, key


@dataclass(frozen=True)
class Credentials:
    """What c2pa.Reader says of a file: the validation state, its codes, and the active manifest."""

    state: str
    codes: list[str]
    manifest: dict[str, Any]

    @property
    def actions(self) -> list[dict[str, Any]]:
        """The c2pa.actions.v2 assertion's actions."""
        (actions,) = [a["data"]["actions"] for a in self.manifest["assertions"] if a["label"] == "c2pa.actions.v2"]
        return actions

    @property
    def generation(self) -> dict[str, Any]:
        """The action that made the file (created or edited)."""
        return self.actions[-1]


def credentials(data: bytes, output_format: str) -> Credentials:
    """The file's C2PA credentials, read and validated by the reference SDK."""
    with c2pa.Reader(MIME[output_format], io.BytesIO(data)) as reader:
        store = json.loads(reader.json())
        state = reader.get_validation_state()
    codes = [status["code"] for status in store.get("validation_status", [])]
    return Credentials(str(state), codes, store["manifests"][store["active_manifest"]])


def has_credentials(data: bytes, output_format: str) -> bool:
    """Whether the file carries a C2PA manifest at all."""
    try:
        credentials(data, output_format)
    except c2pa.C2paError:
        return False
    return True


def flipped(data: bytes, where: float = 0.75) -> bytes:
    """The file with one byte of its pixel data changed (the back of the file: image or media data)."""
    changed = bytearray(data)
    changed[int(len(changed) * where)] ^= 0x01
    return bytes(changed)


def pixels(data: bytes) -> np.ndarray:
    """An image file's (or an animation's first frame's) RGB pixels."""
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"))


def watermark_bits(rgb: np.ndarray, strength: int = watermark.IMAGE_STRENGTH) -> bytes:
    """What invisible-watermark's decoder reads (dwtDctSvd, the documented scales)."""
    from imwatermark import WatermarkDecoder

    decoder = WatermarkDecoder("bytes", 48)
    return bytes(decoder.decode(np.ascontiguousarray(rgb[:, :, ::-1]), "dwtDctSvd", scales=[strength, 0, 0]))


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """Peak signal-to-noise ratio of `other` against `reference`, in dB."""
    error = np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))


def assert_signed(
    data: bytes, output_format: str, action: str = "c2pa.created", signer: str = GENERATED, model: str = "sdxl"
) -> dict:
    """The file's credentials validate, say a trained model made it, name the model and signer; one changed
    byte of its data breaks them. Returns the generation action."""
    found = credentials(data, output_format)
    assert found.state == "Valid", found.codes
    assert set(found.codes) <= {"signingCredential.untrusted"}  # a test or start-up CA is in no trust list
    generation = found.generation
    assert generation["action"] == action
    assert generation["digitalSourceType"] == (CREATED if action == "c2pa.created" else EDITED)
    assert generation["parameters"]["model"] == model
    assert found.manifest["claim_generator_info"][0]["name"] == "kserve-diffusion"
    assert signer in found.manifest["signature_info"]["common_name"]
    broken = credentials(flipped(data), output_format)
    assert broken.state == "Invalid" and any("mismatch" in code for code in broken.codes), broken.codes
    return generation
