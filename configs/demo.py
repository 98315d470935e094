"""The built-in demo (what `python train.py` runs with no flags), on a SYNTHETIC corpus:

demo corpus -> features (random ResNet50 unless demo.weights is set) -> the six Table-1 variants and the
gbdt baseline (search + seeds) -> table1.md/json/png with intervals -> explanations of a few test videos +
faithfulness.json.
"""
from configs import table1


def get_config():
    config = table1.get_config()
    config.kind = "demo"
    # Small, fast settings for a 2-core laptop: search only the numbers that share one compiled program.
    config.search.num_trials = 6
    config.search.space = dict(
        learning_rate=("log_uniform", 3e-4, 3e-3), weight_decay=("log_uniform", 1e-5, 1e-3),
        input_dropout=("uniform", 0.0, 0.3), dropout=("uniform", 0.0, 0.5))
    config.search.num_epochs = 30
    config.train.num_seeds = 3
    config.train.batch_size = 32
    config.train.num_epochs = 40
    config.train.patience = 12
    # Its 32-example batches train faster unsplit than split over a 2-core CPU's two JAX devices (same table).
    config.train.devices = 1
    # Its programs compile for longer than they run: with LLVM's -O1 the Table-1 stage compiles faster
    # and trains at about the same steps/s (benchmarks/fit_steps.py --cpu-opt-level 2 1, benchmarks/RESULTS.md).
    config.train.cpu_opt_level = 1
    # A few hundred videos: 64 histogram bins per column are plenty, and fewer boosting rounds suffice.
    config.gbdt.max_bins = 64
    config.gbdt.max_iter = 50
    config.gbdt_space.max_iter = ("choice", 25, 50, 100)
    config.model.frame_embed_dim = 128
    config.model.frame_attention_dim = 64
    config.model.lstm_hidden = 64
    config.model.word_attention_dim = 64
    config.model.head_hidden = 64
    return config
