"""Every configuration field, with its default (Flax-examples style: other configs start from this one).

``config.model`` holds the structural settings (one compiled program per value) and ``config.hparams`` the
numbers that can differ between vmapped trials; each field goes, by name, to the popjax module attribute of
the same name (``popjax.models.build_model``) or to the optimizer (``learning_rate``, ``weight_decay``).
A field no module takes, or one not declared here, is an error.
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.kind = "train"  # train: one model; table1: the rows of config.table1; study: config.study; demo: all
    config.learner = "neural"  # neural: the paper's models; gbdt: boosted trees on mean features (popjax.gbdt)
    config.progress = True  # progress bars

    config.data = ml_collections.ConfigDict()
    config.data.features = ""  # a dataset directory written by `popjax extract`
    config.data.frames = "all"  # the stored frames a model sees: all | first:K | every:M | seconds:S
    config.data.word_vectors = ""  # a glove.*.txt that re-embeds the vocabulary (empty: the dataset's vectors)

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
    config.model.batch_norm = False  # batch normalisation in the head

    # Numbers that can differ between vmapped trials.
    config.hparams = ml_collections.ConfigDict()
    config.hparams.learning_rate = 1e-3  # AdamW peak, after warm-up; cosine decay to 0
    config.hparams.weight_decay = 1e-4  # AdamW's decoupled weight decay
    config.hparams.input_dropout = 0.1  # on the head's input (the embeddings)
    config.hparams.dropout = 0.3  # on the head's hidden layer

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64  # examples per step, over all devices
    config.train.num_epochs = 40  # at most (early stopping: patience)
    config.train.warmup_epochs = 2  # linear learning-rate warm-up
    config.train.patience = 10  # epochs without a better validation score before stopping
    config.train.checkpoint_every_secs = 60  # resumable state: first epoch, then >= this many s apart, last
    config.train.data_seed = 0  # the order of the training examples
    config.train.first_seed = 0  # seeds first_seed .. first_seed + num_seeds - 1
    config.train.num_seeds = 3  # trained together (vmapped); the best on validation is the run's model
    config.train.devices = 0  # 0: data-parallel over every device of every process; n: the first n (1 process)
    config.train.cpu_opt_level = 2  # XLA:CPU's LLVM level for training's programs (2: XLA's default; 1 compiles faster)

    # Random search on validation (paper Sec. 3); 0 trials = use the settings above.
    config.search = ml_collections.ConfigDict()
    config.search.num_trials = 0
    config.search.seed = 0  # draws the trials
    config.search.num_epochs = 0  # epochs per trial (0: config.train.num_epochs)
    # field -> ("choice", values...) | ("uniform", low, high) | ("log_uniform", low, high), over config.model/hparams
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

    # config.learner = "gbdt": HistGradientBoostingClassifier settings, and the search's space over them.
    config.gbdt = ml_collections.ConfigDict()
    config.gbdt.learning_rate = 0.1  # shrinkage
    config.gbdt.max_iter = 100  # boosting rounds
    config.gbdt.max_leaf_nodes = 15  # per tree
    config.gbdt.min_samples_leaf = 10
    config.gbdt.l2_regularization = 0.0
    config.gbdt.max_features = 0.5  # fraction of the columns each split considers (seeded by the run's seed)
    config.gbdt.max_bins = 255  # histogram bins per column
    config.gbdt_space = ml_collections.ConfigDict({
        "learning_rate": ("log_uniform", 0.02, 0.3),
        "max_iter": ("choice", 50, 100, 200),
        "max_leaf_nodes": ("choice", 7, 15, 31),
        "min_samples_leaf": ("choice", 5, 10, 20),
        "l2_regularization": ("log_uniform", 1e-3, 10.0),
        "max_features": ("uniform", 0.2, 1.0),
    })

    # Multimodal: trained unimodal work directories whose encoders are plugged in (empty: train them first).
    config.multimodal = ml_collections.ConfigDict()
    config.multimodal.video_workdir = ""  # a trained video model's work directory
    config.multimodal.headline_workdir = ""  # a trained headline model's work directory
    config.multimodal.finetune = False  # True: train the encoders too, not only the head

    # kind "table1": the rows to run, of config.table1.rows (name -> {"model": settings over config.model,
    # "encoders": (video row, headline row) a multimodal row combines, "paper": (accuracy %, Spearman)}).
    config.table1 = ml_collections.ConfigDict()
    config.table1.variants = ()
    config.table1.rows = ml_collections.ConfigDict()

    # kind "study": cells over config fields (popjax.study), compared on the same test videos.
    config.study = ml_collections.ConfigDict()
    config.study.grid = ()  # ((field, (value, ...)), ...), e.g. (("model.frame_pooling", ("mean", "attention")),)
    config.study.variants = ()  # ((name, {field: value, ...}), ...): named cells (crossed with the grid if both)
    config.study.reference = ""  # the cell the others are compared with (empty: the first)
    config.study.n_resamples = 2000  # bootstrap and permutation resamples
    config.study.confidence = 0.95  # of the intervals
    config.study.seed = 0  # draws the resamples

    # kind "demo": the synthetic corpus and its extraction (configs/demo.py).
    config.demo = ml_collections.ConfigDict()
    config.demo.num_videos = 320  # synthetic videos (train / val / test by id)
    config.demo.seed = 0  # draws the corpus
    config.demo.weights = ""  # a `popjax convert-weights` directory; empty: a random ResNet50
    config.demo.batch_size = 32  # frames per backbone call
    config.demo.image_size = 0  # frames' side at the backbone's input, pixels (0: the backbone's own, 224)
    # The backbone's computation: float32 | bfloat16 | auto (bfloat16 where the hardware computes it, else float32).
    config.demo.dtype = "auto"
    config.demo.explain_examples = 3  # test videos explained as figures
    return config



def runlocal(config):
    """``config`` at a small size that trains in seconds on a laptop CPU (big_vision's ``runlocal``): for
    trying a setup and for the tests, e.g. ``--config configs/table1.py:video_attention,runlocal``."""
    config.model.update(frame_embed_dim=16, frame_attention_dim=8, lstm_hidden=8, word_attention_dim=8,
                        head_hidden=16)
    config.train.update(batch_size=16, num_epochs=6, warmup_epochs=1, num_seeds=2)
    config.hparams.learning_rate = 0.01
    config.progress = False
    return config
