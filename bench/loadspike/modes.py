"""The modes a load-spike run compares, and the planning algorithm each scales out with (the same
in the box and the simulator; only `modelcast` serves from pipelines while loading, and `ideal`
never scales)."""

ALGORITHM = {"modelcast": "lambdapipe", "no-ewl": "lambdapipe", "chain": "chain", "binary-tree": "binary-tree",
             "local": "local", "ideal": None}
MODES = list(ALGORITHM)
