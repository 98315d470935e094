"""Defaults shared by every configuration (Flax-examples style: other configs start from this one)."""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.kind = "train"  # "train": one model; "table1": the six variants; "demo": everything end to end
    config.progress = True

    config.data = ml_collections.ConfigDict()
    config.data.features = ""  # a dataset directory written by `popjax extract`

    # Shapes and structure (paper Sec. 2); the search may change them.
    config.model = ml_collections.ConfigDict()
    config.model.modality = "multimodal"  # video | headline | multimodal
    config.model.frame_pooling = "attention"  # mean (baseline) | attention
    config.model.headline_pooling = "attention"  # last (baseline biLSTM) | attention
    config.model.frame_embed_dim = 256  # q_i
    config.model.frame_attention_dim = 128  # u_i for frames
    config.model.lstm_hidden = 128  # per direction
    config.model.word_attention_dim = 128  # u_t for words
    config.model.head_hidden = 128  # the two-layer head's hidden (multimodal embedding) size
    config.model.batch_norm = False

    # Numbers that can differ between vmapped trials.
    config.hparams = ml_collections.ConfigDict()
    config.hparams.learning_rate = 1e-3
    config.hparams.weight_decay = 1e-4
    config.hparams.input_dropout = 0.1
    config.hparams.dropout = 0.3

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64
    config.train.num_epochs = 40
    config.train.warmup_epochs = 2
    config.train.patience = 10  # epochs without a better validation score before stopping
    config.train.checkpoint_every_secs = 60  # resumable state: first epoch, then >= this many s apart, last
    config.train.data_seed = 0
    config.train.first_seed = 0
    config.train.num_seeds = 3  # trained together (vmapped); the best on validation is the run's model
    config.train.devices = 0  # 0: data-parallel over every device of every process; n: the first n (1 process)
    config.train.cpu_opt_level = 2  # XLA:CPU's LLVM level for training's programs (2: XLA's default; 1 compiles faster)

    # Random search on validation (paper Sec. 3); 0 trials = use the settings above.
    config.search = ml_collections.ConfigDict()
    config.search.num_trials = 0
    config.search.seed = 0
    config.search.space = ml_collections.ConfigDict({
        "frame_embed_dim": ("choice", 128, 256, 512),
        "lstm_hidden": ("choice", 64, 128, 256),
        "head_hidden": ("choice", 64, 128, 256),
        "batch_norm": ("choice", False, True),
        "learning_rate": ("log_uniform", 1e-4, 3e-3),
        "weight_decay": ("log_uniform", 1e-6, 1e-3),
        "input_dropout": ("uniform", 0.0, 0.5),
        "dropout": ("uniform", 0.0, 0.5),
    })

    # Multimodal: trained unimodal work directories whose encoders are plugged in (empty: train them first).
    config.multimodal = ml_collections.ConfigDict()
    config.multimodal.video_workdir = ""
    config.multimodal.headline_workdir = ""
    config.multimodal.finetune = False  # True: train the encoders too, not only the head
    return config


def variant(name: str):
    """These defaults with the model settings of one row of the paper's Table 1 (``popjax.experiment.VARIANTS``,
    the same table ``configs/table1.py`` runs)."""
    from popjax.experiment import VARIANTS

    config = get_config()
    config.model.update(VARIANTS[name])
    return config
