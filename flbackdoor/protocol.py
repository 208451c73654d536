"""The wire contract between the ServerApp and the ClientApps: message types and record keys.

Both sides import these names; a key spelled in one place cannot drift from the other.
"""

from __future__ import annotations

# Message types (Flower: ``train`` or ``query.<action>``).
TRAIN = "train"
IDENTIFY_ACTION = "identify"
PRUNE_ACTIVATIONS_ACTION = "prune_activations"
PRUNE_EVALUATE_ACTION = "prune_evaluate"
TRIGGER_REPORT_ACTION = "trigger_report"
IDENTIFY = f"query.{IDENTIFY_ACTION}"
PRUNE_ACTIVATIONS = f"query.{PRUNE_ACTIVATIONS_ACTION}"
PRUNE_EVALUATE = f"query.{PRUNE_EVALUATE_ACTION}"
TRIGGER_REPORT = f"query.{TRIGGER_REPORT_ACTION}"

# Records of a train message and of its reply.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SERVER_ROUND = "server-round"

# A train reply's metrics.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train_loss"

# The identify reply: record and keys.
NODE = "node"
PARTITION_ID = "partition-id"
ROLE = "role"

# The colluding attackers' side channel in a train message's config (server -> attackers).
ATTACK_ROUND_EXAMPLES = "attack-round-examples"
ATTACK_NUM_ATTACKERS = "attack-num-attackers"
# ... and, for the attacks that read them, array records in the message: the last global update
# w_t - w_{t-1} (Neurotoxin), and the round's benign updates w_k - w_t, one record each, keys
# ``attack-benign-0``, ``attack-benign-1``, ... (the omniscient untargeted attacks).
ATTACK_GLOBAL_UPDATE = "attack-global-update"
ATTACK_BENIGN_UPDATE = "attack-benign-"

# Client-side ABL's isolation report in a train reply's metrics.
ISOLATED_COUNT = "isolated_count"
ISOLATED_POISONED = "isolated_poisoned"
POISONED_COUNT = "poisoned_count"

# A node's config (``--node-config``): its identity, and its own data folders on its host.
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_ROLE = "role"
NODE_DATA_ROOT = "data-root"
NODE_CACHE_DIR = "cache-dir"

# Flower's run config, as ``flbackdoor`` submits it.
RUN_EXPERIMENT = "experiment"
RUN_OUTPUT_DIR = "output-dir"

# Wu et al.'s pruning queries: a node's vote (ranking or keep mask) and its accuracy report.
VOTE = "vote"
VOTE_VALUES = "values"
REPORT = "report"
REPORT_ACCURACIES = "accuracies"

# The trigger report (server/trigger_report.py): an attacker with an adaptive trigger keeps it in
# its node state under this record and answers ``query.trigger_report`` with exactly that record
# (its array names are the backdoor task's ``report_spec``).
TRIGGER = "trigger"
