"""One request over several ranks (issue 32): context parallelism (Ulysses, Ring) with every per-step decision
taken together. plan.py checks the flags, group.py opens the process group, collective.py makes the per-step
decisions collective, runner.py is rank 0's runner, follower.py the other ranks' loop."""
