"""Train and evaluate popjax models (Flax-examples style entry point; the logic lives in popjax/).

    python train.py                                    # the built-in demo, end to end (configs/demo.py)
    python train.py --config configs/table1.py:multimodal_attention --workdir W --config.data.features=F
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


def usage_error(e: Exception) -> None:
    """A bad flag or config override (an unknown or misspelt field, a value of the wrong type, a config file
    that fails to load): one line and exit code 2."""
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = lines[-1] if any(line.startswith("Traceback") for line in lines) else " ".join(lines)
    if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
        message = message[1:-1]
    if isinstance(e, (AttributeError, KeyError)):   # an override of a field the config does not have
        for arg in sys.argv[1:]:
            flag = arg.split("=")[0]
            field = flag.rsplit(".", 1)[-1]
            if flag.startswith("--config.") and f"'{field}'" in text:
                hint = message[message.index("Did you mean"):] if "Did you mean" in message else ""
                message = f"{flag}: no such config field {field!r}" + (f" ({hint})" if hint else "")
                break
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(2)


try:   # config_flags reads the --config.* overrides here, at definition
    config_flags.DEFINE_config_file("config", os.path.join(HERE, "configs", "demo.py"),
                                    "Configuration file (configs/NAME.py[:ARG]).", lock_config=True)
except Exception as e:
    usage_error(e)


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
        config = FLAGS.config
        config.get("kind")   # a config file that failed to load fails here
    except Exception as e:
        usage_error(e)
    try:
        workflow.run(config, FLAGS.workdir)
    except (ConfigError, FileNotFoundError) as e:   # a bad setting or a missing input: one line, exit 2
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv):
    """absl's flag parsing, a bad flag or value answered by ``usage_error``."""
    try:
        return FLAGS(argv)
    except Exception as e:   # flags.Error, or what ml_collections raises for an override
        usage_error(e)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
