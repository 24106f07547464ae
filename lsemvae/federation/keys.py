"""Record and metric keys of the messages between ServerApp and ClientApp, named once.

Both apps import these; a renamed key is then a one-line change, not a silent mismatch.
"""

from __future__ import annotations

# Message types (Flower dispatches @app.train / @app.evaluate on these).
TRAIN = "train"
EVALUATE = "evaluate"

# RecordDict entries.
ARRAYS = "arrays"                 # ArrayRecord: parameters of the federated groups only
CONFIG = "config"                 # ConfigRecord: server -> site instructions
METRICS = "metrics"               # MetricRecord: aggregate numbers (site -> server)
GROUP_WEIGHTS = "group-weights"   # MetricRecord: group name -> examples that trained it
SITE = "site"                     # ConfigRecord: site name, lead set, tasks (no data)
HISTOGRAMS = "histograms"         # MetricRecord: "<task>/<class>/pos|neg" -> binned score counts
GATES = "gates"                   # MetricRecord: lead group -> mean HiME gate weight over the evaluation records

# Server -> site config keys.
ROUND = "server-round"
LOCAL_EPOCHS = "local-epochs"
LR = "lr"
BATCH_SIZE = "batch-size"
PROXIMAL_MU = "proximal-mu"
DP = "dp"
NUM_ROUNDS = "num-server-rounds"
HIST_BINS = "eval-bins"
RUN_SEED = "seed"
TRAIN_ENCODERS = "train-encoders"  # false: sites train and send only fusion and heads (encoders stay as pretrained)
UPDATE_DTYPE = "update-dtype"     # wire dtype of ARRAYS in both directions (lsemvae.federation.codec)
BASE_DIGEST = "base-digest"       # digest of the frozen encoders (probe): a site holding them is sent only the rest

# Site -> server metric keys (all sites send the same keys).
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EPSILON = "epsilon"              # cumulative epsilon of the site's ledger at its delta (0 if no DP)
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
TRAIN_SECONDS = "train-seconds"
SITE_SECONDS = "site-seconds"    # wall time of the whole ClientApp handler (data, model, DP accounting, work)

# Site info keys (ConfigRecord SITE).
SITE_NAME = "name"
SITE_LEADS = "leads"
SITE_TASKS = "tasks"
SITE_DP = "dp"
MODEL_CONFIG = "model-config"            # JSON of lsemvae.model.config.ModelConfig (heads = federation tasks)
PREPROCESS_CONFIG = "preprocess-config"  # JSON of lsemvae.data.preprocess.PreprocessConfig (from the checkpoint)
HIST_CLASSES = "classes"
HIST_PARTS = "parts"

# Error-reply codes (Message(Error(code, reason))): the server logs them per site.
ERR_INTERNAL = 4000
ERR_BUDGET = 4001            # next round would exceed the site's privacy budget
ERR_SITE_SETUP = 4002        # site config / data problem at the site
ERR_NON_DP_REFUSED = 4003    # server asked for non-DP training, site does not allow it
ERR_BAD_MESSAGE = 4004       # malformed or mismatched server message
ERR_NO_BASE = 4005           # the message relies on frozen encoders the site does not hold: send them again
