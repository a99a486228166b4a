"""Units of the third hardening round: API keys and identities, queue reservations, the last-word 500 handler,
the start-up notes, finite settings and the speed options beside SDXL."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from kserve_diffusion import startup_notes
from kserve_diffusion.config import defaults
from kserve_diffusion.config.parsing import parse_config, read_api_keys
from kserve_diffusion.errors import ConfigError, ServerBusy
from kserve_diffusion.pipelines import serving_family
from kserve_diffusion.runtime.control import RequestControl
from kserve_diffusion.runtime.worker import GenerationWorker
from kserve_diffusion.server.auth import ApiKeys, bearer_token, caller_identity, grpc_open
from kserve_diffusion.server.handlers import LastWord
from kserve_diffusion.server.openai.schemas import OpenAIError
from kserve_diffusion.server.openai.videos import _seconds
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route


def test_api_keys_from_a_list_or_a_file(tmp_path: Path) -> None:
    assert read_api_keys(None) == ()
    assert read_api_keys(" a1 , b2,,a1") == ("a1", "b2")
    keys = tmp_path / "keys"
    keys.write_text("# comment\nfirst-key\n\n  second-key  \n")
    assert read_api_keys(f"@{keys}") == ("first-key", "second-key")
    with pytest.raises(ConfigError, match="cannot read the key file"):
        read_api_keys(f"@{tmp_path / 'missing'}")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no key"):
        read_api_keys(f"@{tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match="key 2 of the list is not printable") as raised:
        read_api_keys("good,bad\u00e9key")
    assert "bad" not in str(raised.value)  # a key is never shown


def test_keys_are_compared_and_identities_hashed() -> None:
    keys = ApiKeys(["alpha", "beta"])
    assert keys.required and keys.accepts("Bearer alpha") and keys.accepts("bearer  beta ")
    assert not keys.accepts(None) and not keys.accepts("alpha") and not keys.accepts("Bearer gamma")
    assert not keys.accepts("Basic alpha") and not ApiKeys([]).required
    assert bearer_token("Bearer ") is None
    token = caller_identity({"authorization": "Bearer alpha"}, None)
    assert token is not None and token.startswith("token:") and "alpha" not in token
    assert caller_identity({"authorization": "Bearer alpha"}, None) == token
    assert caller_identity({"authorization": "Bearer beta"}, None) != token
    headers = {"x-forwarded-user": "ann", "authorization": "Bearer alpha"}
    assert caller_identity(headers, "x-forwarded-user") == caller_identity(
        {"x-forwarded-user": "ann"}, "x-forwarded-user"
    )
    assert caller_identity({}, "x-forwarded-user") is None and caller_identity({}, None) is None
    assert grpc_open("/inference.GRPCInferenceService/ServerReady")
    assert grpc_open("/inference.GRPCInferenceService/ModelReady")
    assert not grpc_open("/inference.GRPCInferenceService/ModelInfer")


@pytest.mark.parametrize(
    "flags",
    [
        ["--job_ttl_seconds", "1e400"],
        ["--request_timeout", "inf"],
        ["--cache_threshold", "inf"],
        ["--image_fetch_timeout", "nan"],
        ["--job_owner_header", "X User"],
    ],
)
def test_settings_refuse_what_cannot_work(flags: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse_config(flags, environ={}, cuda_available=lambda: False)


def test_a_reserved_place_is_kept_across_instances() -> None:
    worker = GenerationWorker(max_queue=2)
    first, second = worker.reserve(), worker.reserve()
    with pytest.raises(ServerBusy):
        worker.reserve()
    with pytest.raises(ServerBusy):
        worker.check_room()  # a synchronous request finds no room either

    async def run_three_instances() -> None:
        for index in range(3):
            if index:
                first.hold_again()  # between instances: no room check, the place is the job's
            control = RequestControl("r", 60)
            timed = await worker.run(lambda control, index=index: index, control, reservation=first)
            assert timed.value == index
        first.release()

    asyncio.run(run_three_instances())
    assert worker.waiting == 1  # the second job's place
    second.release()
    second.release()  # twice is once
    assert worker.waiting == 0
    worker.shutdown()


def test_the_last_word_answers_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(_: object) -> None:
        raise ValueError("invalid literal for int() with base 10: '²'")

    # As in the server: a user middleware, inside Starlette's ServerErrorMiddleware (which would re-raise).
    app = Starlette(
        routes=[Route("/boom", broken), Route("/openai/v1/boom", broken)], middleware=[Middleware(LastWord)]
    )

    async def call() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return [await http.get("/boom", headers={"x-request-id": "abc"}), await http.get("/openai/v1/boom")]

    with caplog.at_level(logging.ERROR):
        plain, openai_shape = asyncio.run(call())
    assert plain.status_code == 500 and plain.json() == {
        "error": "internal error; the server log has details under request id abc"
    }
    assert openai_shape.status_code == 500 and openai_shape.json()["error"]["type"] == "server_error"
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 2  # one record a failure
    assert caplog.text.count("Traceback") == 2


@pytest.mark.parametrize("value", ["²", "①", "١٢", "1.5", "", "0", "99999"])
def test_seconds_are_ascii_digits(value: str) -> None:
    with pytest.raises(OpenAIError) as raised:
        _seconds(value, 8, 81)
    assert raised.value.status == 400
    assert _seconds("2", 8, 81) == ("2", 17)


def test_start_up_notes_say_it_once_in_our_words(caplog: pytest.LogCaptureFixture) -> None:
    startup_notes.install()
    startup_notes.install()  # twice is once
    logger = logging.getLogger("torchao")
    for note in startup_notes.NOTES:
        note.told = False
    with caplog.at_level(logging.INFO, logger="torchao"):
        logger.warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
        logger.warning("Failed to load /x/_C_cutlass_90a.so: Could not load this library")
        logger.warning("something else")
    messages = [r.getMessage() for r in caplog.records if r.name == "torchao"]
    assert len(messages) == 2 and messages[0].startswith("note: torchao's optional prebuilt kernels")
    assert messages[1] == "something else"
    assert [r.levelname for r in caplog.records if r.name == "torchao"] == ["INFO", "WARNING"]


def test_speed_options_beside_sdxl_apply_to_wan() -> None:
    for settings in ({"cache": "first_block"}, {"attention_backend": "native"}):
        serving_family(defaults(model_type="sdxl", video_model_id="wan-folder", **settings))  # no error
        with pytest.raises(ConfigError):
            serving_family(defaults(model_type="sdxl", **settings))
