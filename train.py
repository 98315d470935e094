"""Train and evaluate popjax models (Flax-examples style entry point; the logic lives in popjax/).

    python train.py                                    # the built-in demo, end to end (configs/demo.py)
    python train.py --config configs/multimodal_attention.py --workdir W --config.data.features=F
    python train.py --config configs/table1.py --workdir W --config.data.features=F

Several hosts: start one process per host with --coordinator_address, --num_processes, --process_id
(or --distributed on a cluster JAX can auto-detect); every process runs the same command.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Directory for checkpoints, metrics and outputs.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (cluster auto-detection).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for multi-host runs.")
flags.DEFINE_integer("process_id", None, "This process's index, for multi-host runs.")
config_flags.DEFINE_config_file("config", os.path.join(HERE, "configs", "demo.py"),
                                "Configuration file (configs/NAME.py).", lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from popjax import parallel, runtime, workflow

    runtime.configure()   # one CPU device per core, persistent compilation cache
    if FLAGS.distributed or FLAGS.coordinator_address:
        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    logging.set_verbosity(logging.WARNING)
    from popjax.experiment import ConfigError

    try:
        workflow.run(FLAGS.config, FLAGS.workdir)
    except (ConfigError, FileNotFoundError) as e:   # a bad setting or a missing input: one line, exit 2
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
