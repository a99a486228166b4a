"""A follower rank: `python -m kserve_diffusion.parallel.follower <the server's flags>`, started by rank 0 with
its rank in the environment. It loads and splits the same model, then runs every request rank 0 sends, in step
with it, and throws its copy of the output away."""

from __future__ import annotations

import logging
import os
import sys

from ..config import parse_config
from ..pipelines import resolve_model_type, serving_family
from .channel import STOP, Receiver
from .collective import CollectiveObserver
from .group import close_group, open_group
from .plan import ParallelPlan
from .runner import ADDRESS, PORT_ENV, RANK_ENV, WORLD_ENV, load_split

logger = logging.getLogger("kserve.diffusion")


def main() -> int:
    """Serve rank 0 until it says stop or the group is lost."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank %(process)d %(levelname)s %(message)s")
    rank, world_size, port = (int(os.environ[name]) for name in (RANK_ENV, WORLD_ENV, PORT_ENV))
    config = resolve_model_type(parse_config(sys.argv[1:]))
    group = open_group(rank, world_size, ADDRESS, port, config.device, config.parallel_timeout, lambda: None)
    runner, passes = load_split(serving_family(config), config, ParallelPlan.from_config(config), group)
    observer = CollectiveObserver(None, group.control, passes)
    requests = Receiver(group.store, os.getppid())
    logger.info("rank %d of %d ready", rank, world_size)
    try:
        while True:
            message = requests.receive()
            if message is STOP:
                return 0
            request, seed, inputs = message
            if passes is not None:
                passes.reset()
            try:
                runner.use_loras(request)
                runner.generate(request, seed, inputs, observer)
                split = passes is not None and passes.two_passes
                logger.info("rank %d: request done%s", rank, " (its two passes split)" if split else "")
            except Exception as exc:  # noqa: BLE001 - rank 0 reports the request's failure; this rank goes on
                logger.info("rank %d: request stopped: %s", rank, exc)
    except Exception as exc:  # noqa: BLE001 - the group is lost: rank 0 restarts it
        logger.error("rank %d: the group is lost (%s); exiting", rank, exc)
        return 1
    finally:
        close_group()


if __name__ == "__main__":
    sys.exit(main())
