"""tf.distribute: two replicas on a global batch take the same step as one device.

Runs in subprocesses: the two logical CPU devices must be set up, and MultiWorkerMirroredStrategy
created, before TensorFlow runs anything.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}

# The model, the data and two fit steps, shared by the scripts below.
SETUP = r"""
import numpy as np
import tensorflow as tf
from tensorflow_mean_teacher import HyperParams, MeanTeacher

hp = HyperParams(input_noise=0.0, translate=False, student_dropout_probability=0.0,
                 teacher_dropout_probability=0.0, rampup_length=0, max_learning_rate=0.003)
rng = np.random.RandomState(0)
x = rng.uniform(size=(3, 8, 32, 32, 3)).astype(np.float32)
# Each half of a global batch of 8 (one replica's share) has 2 labeled and 2 unlabeled rows.
y = np.tile(np.where(np.arange(4) < 2, np.arange(4), -1), 2).astype(np.int32)
stream = tf.data.Dataset.from_tensor_slices((x[1:], np.stack([y, y]))).repeat()
# 13 labeled rows in batches of 8 and 5: the last batch splits 3 + 2 over two replicas.
evaluation = tf.data.Dataset.from_tensor_slices(
    (rng.uniform(size=(13, 32, 32, 3)).astype(np.float32), np.arange(13) % 10)).batch(8)


# The runners' stream (training_dataset on a host_images variable), distributed: do this
# process's replicas receive their rows of each global batch, from first_row on?
def pipeline_shares_match(strategy, first_row):
    from datasets import host_images, training_dataset
    pipeline = training_dataset(host_images(x.reshape(-1, 32, 32, 3)), np.tile(y, 3),
                                batch_size=8, n_labeled_per_batch=2, seed=0)
    whole = [batch[0].numpy() for batch in pipeline.take(2)]
    shares = [np.concatenate([t.numpy() for t in strategy.experimental_local_results(batch[0])])
              for _, batch in zip(range(2), strategy.experimental_distribute_dataset(pipeline))]
    return all(np.array_equal(share, rows[first_row:first_row + len(share)])
               for share, rows in zip(shares, whole, strict=True))


def run(strategy):
    with strategy.scope():
        model = MeanTeacher(hp, width=4, seed=1)
        model.compile()
    model.initialize_from_batch(x[0])
    init_g = [layer.g.numpy() for layer in model.student.weight_norm_layers]
    history = model.fit(stream, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False).history
    weights = [v.numpy() for v in model.student.weights + model.teacher.weights]
    logs = {k: float(np.squeeze(v[-1])) for k, v in history.items()}
    logs.update(model.evaluate(evaluation, verbose=0, return_dict=True))
    return init_g, {k: float(v) for k, v in logs.items()}, weights, \
        strategy.num_replicas_in_sync
"""

MIRRORED = r"""
import json
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""" + SETUP + r"""
single = run(tf.distribute.get_strategy())
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
mirrored = run(strategy)

# The random perturbations of the two replicas' shares: the same input on both replicas.
from tensorflow_mean_teacher.layers import Dropout, InputStage
with strategy.scope():
    stage = InputStage(input_noise=0.15, seed=4)
    dropout = Dropout(0.5, seed=5)
draws = strategy.experimental_local_results(strategy.run(lambda: (
    stage(tf.constant(x[0][:4]), training=True), dropout(tf.ones([4, 64]), training=True))))
print(json.dumps({
    "pipeline_shares_match": pipeline_shares_match(strategy, 0),
    "replica_draws_equal": [bool(np.array_equal(draws[0][i], draws[1][i])) for i in range(2)],
    "replicas": [single[3], mirrored[3]],
    "init_g_max_abs": max(float(np.abs(a - b).max()) for a, b in zip(single[0], mirrored[0])),
    "weights_max_rel": max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-6))
                           for a, b in zip(single[2], mirrored[2])),
    "logs": {k: [single[1][k], mirrored[1][k]] for k in single[1]},
}))
"""

# One worker of a two-worker cluster (TF_CONFIG). Each worker has one CPU device; the chief
# also makes the one-device run, after the cluster's. argv: output directory.
WORKER = r"""
import json, os, sys
import tensorflow as tf

# First, before any other TensorFlow operation; a collective that waits longer fails the run.
strategy = tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=tf.distribute.experimental.CommunicationOptions(timeout_seconds=60))
""" + SETUP + r"""
from tensorflow_mean_teacher import distribution
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.training import RunConfig, train

out = sys.argv[1]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
# What this worker's replica receives of the first two global batches.
shares = [strategy.experimental_local_results(batch[0])[0].numpy()
          for _, batch in zip(range(2), strategy.experimental_distribute_dataset(stream))]
init_g, logs, weights, replicas = run(strategy)
try:
    distribution.check_workers_agree(strategy, step=index)  # worker 0 at 0, worker 1 at 1
    refused = ""
except RuntimeError as error:
    refused = str(error)

# A whole (short) run: only the chief writes into the results directory.
config = RunConfig(hyperparams=HyperParams(
    training_length=2, evaluation_span=2, print_span=1, rampup_length=0, input_noise=0.0,
    translate=False, student_dropout_probability=0.0, teacher_dropout_probability=0.0),
    batch_size=8, width=4, seed=1)
results = train(config, lambda skip: stream.skip(skip), evaluation, os.path.join(out, "run"),
                strategy=strategy, console=lambda line: None)

np.savez(os.path.join(out, f"worker{index}.npz"), *weights, *init_g, *shares)
summary = {"replicas": replicas, "logs": logs, "refused": refused, "results": results,
           "pipeline_shares_match": pipeline_shares_match(strategy, 4 * index),
           "chief": distribution.is_chief(strategy), "weights": len(weights),
           "pid": os.getpid()}
if index == 0:
    single = run(tf.distribute.get_strategy())
    np.savez(os.path.join(out, "single.npz"), *single[2], *single[0])
    summary["single_logs"] = single[1]
with open(os.path.join(out, f"worker{index}.json"), "w") as f:
    json.dump(summary, f)
"""


def assert_close(name, one, distributed):
    # The training logs to 1e-5. The evaluation runs in inference mode on the weights of the
    # last step, whose large logits amplify the weights' differences: it gets the weights'
    # tolerance, 1e-4.
    tolerance = 1e-4 if name.startswith("eval/") else 1e-5
    assert abs(one - distributed) <= tolerance * max(abs(one), 1.0), (name, one, distributed)


def test_two_replicas_match_one_device(tmp_path):
    script = tmp_path / "distributed.py"
    script.write_text(MIRRORED)
    completed = subprocess.run([sys.executable, str(script)], cwd=REPO, env=ENV,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    # The data-dependent init sees the whole batch: every replica gets the same g.
    assert result["init_g_max_abs"] == 0.0
    # Two steps: batch means and gradients reduced across replicas, as on one device.
    assert result["weights_max_rel"] < 1e-4, result
    for name, (one, two) in result["logs"].items():
        assert_close(name, one, two)
    # Each replica's share gets its own noise, translations, flips and dropout masks.
    assert result["replica_draws_equal"] == [False, False]
    assert result["pipeline_shares_match"] is True


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Runs WORKER in two processes on localhost; returns the output directory."""
    out = tmp_path_factory.mktemp("workers")
    script = out / "worker.py"
    script.write_text(WORKER)
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes, logs = [], [out / f"worker{index}.log" for index in range(2)]
    for index, log in enumerate(logs):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        with log.open("w") as f:  # a file, not a pipe: a full pipe would stall a worker
            processes.append(subprocess.Popen(
                [sys.executable, str(script), str(out)], cwd=REPO,
                env={**ENV, "TF_CONFIG": json.dumps(tf_config)}, stdout=f, stderr=f))
    failures = []
    for index, process in enumerate(processes):
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
                other.wait()
            failures.append(f"worker {index} timed out")
        if process.returncode:
            failures.append(f"worker {index} exited {process.returncode}:\n"
                            + logs[index].read_text()[-3000:])
    assert not failures, "\n".join(failures)
    return out


def load_worker(out, name):
    summary = json.loads((out / f"{name}.json").read_text()) if name != "single" else None
    with np.load(out / f"{name}.npz") as arrays:
        return summary, [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def test_two_workers_split_each_global_batch_and_match_one_device(two_workers):
    chief, chief_arrays = load_worker(two_workers, "worker0")
    other, other_arrays = load_worker(two_workers, "worker1")
    _, single_arrays = load_worker(two_workers, "single")
    assert [chief["replicas"], other["replicas"]] == [2, 2]
    n_weights = chief["weights"]
    n_init = len(single_arrays) - n_weights

    # Each worker feeds its own half of each global batch (the default AUTO shard policy falls
    # back to DATA, after splitting each global batch into one share per replica).
    x = np.random.RandomState(0).uniform(size=(3, 8, 32, 32, 3)).astype(np.float32)
    shares = chief_arrays[-2:], other_arrays[-2:]
    for step in range(2):
        np.testing.assert_array_equal(shares[0][step], x[1 + step][:4])
        np.testing.assert_array_equal(shares[1][step], x[1 + step][4:])
    # So does the runners' stream, which gathers from a host_images variable.
    assert [chief["pipeline_shares_match"], other["pipeline_shares_match"]] == [True, True]

    # The init runs on the whole first batch on every worker: the same g as one device.
    init = slice(n_weights, n_weights + n_init)
    for ours, theirs, one in zip(chief_arrays[init], other_arrays[init], single_arrays[init],
                                 strict=True):
        np.testing.assert_array_equal(ours, one)
        np.testing.assert_array_equal(theirs, one)
    # After two steps both workers hold the same weights, those of one device.
    max_rel = 0.0
    for ours, theirs, one in zip(chief_arrays[:n_weights], other_arrays[:n_weights],
                                 single_arrays[:n_weights], strict=True):
        np.testing.assert_array_equal(ours, theirs)
        max_rel = max(max_rel, float(np.abs(ours - one).max() / max(np.abs(one).max(), 1e-6)))
    assert max_rel < 1e-4, max_rel
    # The training logs and the evaluation (its last batch split 3 + 2) are global means.
    assert set(chief["logs"]) == set(chief["single_logs"])
    assert "eval/error/ema" in chief["logs"] and "train/cons_cost/mt" in chief["logs"]
    for name, one in chief["single_logs"].items():
        assert_close(name, one, chief["logs"][name])
        assert other["logs"][name] == chief["logs"][name], name


def test_workers_that_start_from_different_steps_are_refused(two_workers):
    for name in ("worker0", "worker1"):
        summary, _ = load_worker(two_workers, name)
        assert "The workers start from different steps: [0, 1]" in summary["refused"]


def test_only_the_chief_writes_the_run(two_workers):
    chief, _ = load_worker(two_workers, "worker0")
    other, _ = load_worker(two_workers, "worker1")
    assert chief["chief"] and not other["chief"]
    run = two_workers / "run"
    # The lock is the chief's alone (the other workers never take it).
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock", "checkpoints", "config.json", "export.json", "results.json", "teacher",
        "tensorboard", "training_log.csv", "validation_log.csv"]
    assert f"pid {chief['pid']} " in (run / ".lock").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "MANIFESTS", "checkpoint", "ckpt-0.data-00000-of-00001", "ckpt-0.index",
        "ckpt-0.manifest.json", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
        "ckpt-2.manifest.json"]
    saved = json.loads((run / "results.json").read_text())
    assert saved["step"] == 2 and saved["replicas"] == 2 and saved["workers"] == 2
    assert saved["export_dir"] == str(run / "teacher")
    # The other worker took the same steps, wrote into a temporary directory, then removed it.
    assert other["results"]["step"] == 2
    assert other["results"]["eval/error/ema"] == saved["eval/error/ema"]
    assert other["results"]["eval/class_cost/1"] == saved["eval/class_cost/1"]
    assert other["results"]["export_dir"] != saved["export_dir"]
    assert not Path(other["results"]["export_dir"]).parent.exists()


# `train` on one device and on two replicas; a one-device run resumed on two replicas; a
# global batch that two replicas cannot share. argv: output directory.
TRAIN = r"""
import dataclasses, json, sys
from pathlib import Path
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.training import RunConfig, train

out = Path(sys.argv[1])
rng = np.random.RandomState(0)
x = rng.uniform(size=(40, 32, 32, 3)).astype(np.float32)
# Rows 0-2 of each global batch of 8 are labeled: the first replica's share has all the labels.
y = np.where(np.arange(40) % 8 < 3, np.arange(40) % 10, -1).astype(np.int32)


def stream(skip):
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8).skip(skip)


evaluation = tf.data.Dataset.from_tensor_slices(
    (x[:13], (np.arange(13) % 10).astype(np.int32))).batch(8)
hp = HyperParams(training_length=4, evaluation_span=2, print_span=1, rampup_length=2,
                 rampdown_length=2, input_noise=0.0, translate=False,
                 student_dropout_probability=0.0, teacher_dropout_probability=0.0)
config = RunConfig(hyperparams=hp, batch_size=8, width=4, eval_mean_decay=0.9, seed=3)
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
quiet = dict(console=lambda line: None)
train(config, stream, evaluation, out / "single", **quiet)
train(config, stream, evaluation, out / "mirrored", strategy=mirrored, **quiet)
try:  # a one-device run whose stream runs dry after step 3 ...
    train(config, lambda skip: stream(skip).take(max(0, 4 - skip)), evaluation,
          out / "resumed", **quiet)
    cut = ""
except RuntimeError as error:
    cut = str(error)
lines = []  # ... resumed on two replicas
train(config, stream, evaluation, out / "resumed", strategy=mirrored, console=lines.append)
try:
    train(dataclasses.replace(config, batch_size=7), stream, evaluation, out / "odd",
          strategy=mirrored, **quiet)
    odd = ""
except ValueError as error:
    odd = str(error)
print(json.dumps({"cut": cut, "resumed": lines[0], "odd": odd}))
"""


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def checkpoint_values(run_dir, step):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / f"ckpt-{step}"))
    bookkeeping = {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE"}
    names = set(reader.get_variable_to_shape_map()) - bookkeeping
    return {name: reader.get_tensor(name) for name in names}


def test_train_on_two_replicas_matches_one_device_and_resumes_a_one_device_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    completed = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=REPO, env=ENV,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    messages = json.loads(completed.stdout.strip().splitlines()[-1])
    single, mirrored, resumed = (tmp_path / name for name in ("single", "mirrored", "resumed"))

    # The number of replicas is recorded, and is not part of the config.
    one = json.loads((single / "results.json").read_text())
    for run_dir in (mirrored, resumed):
        two = json.loads((run_dir / "results.json").read_text())
        assert (one["replicas"], two["replicas"], two["step"]) == (1, 2, 4)
        assert (single / "config.json").read_text() == (run_dir / "config.json").read_text()
        # The evaluation's last batch of 5 splits 3 + 2: still the mean over the 13 rows.
        for name in ("eval/error/ema", "eval/error/1", "eval/class_cost/ema", "eval/class_cost/1"):
            assert_close(name, one[name], two[name])
    assert "training stream ended at step 3" in messages["cut"]
    assert messages["resumed"] == f"resumed from {resumed / 'checkpoints' / 'ckpt-3'} at step 3"

    # The training logs: the errors are means over the labeled rows, all in one replica's share.
    one_log = read_csv(single / "training_log.csv")
    assert [int(row["step"]) for row in one_log] == [1, 2, 3, 4]
    assert float(one_log[0]["train/error/1"]) > 0
    for run_dir in (mirrored, resumed):
        log = read_csv(run_dir / "training_log.csv")
        assert [row["step"] for row in log] == [row["step"] for row in one_log]
        for ours, theirs in zip(one_log, log, strict=True):
            for name in ours:
                if name not in ("step", "seconds_per_step"):
                    assert_close(name, float(ours[name]), float(theirs[name]))

    # The complete state after 4 steps: weights, eval means, Adam's slots and beta products to
    # the weights' tolerance; the step, the generators' states and the init flag exactly.
    final = checkpoint_values(single, 4)
    assert len(final) > 100
    for run_dir in (mirrored, resumed):
        other = checkpoint_values(run_dir, 4)
        assert set(other) == set(final)
        max_rel = 0.0
        for name, value in final.items():
            if value.dtype.kind == "f":
                max_rel = max(max_rel, float(np.abs(other[name] - value).max()
                                             / max(np.abs(value).max(), 1e-6)))
            else:
                np.testing.assert_array_equal(other[name], value, err_msg=name)
        assert max_rel < 1e-4, (run_dir.name, max_rel)

    # A global batch of 7 cannot be split over 2 replicas: refused before anything is written.
    assert "batch_size=7 is not divisible by the 2 replicas in sync" in messages["odd"]
    assert not (tmp_path / "odd").exists()


def test_strategy_names():
    import tensorflow as tf

    from tensorflow_mean_teacher import distribution

    assert distribution.strategy_from_name("none") is tf.distribute.get_strategy()
    assert distribution.strategy_from_name("default") is tf.distribute.get_strategy()
    mirrored = distribution.strategy_from_name("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert distribution.strategy_from_name("mirrored") is mirrored  # one per process
    with pytest.raises(ValueError, match=r"distribute must be one of \('none', 'default', "
                                         r"'mirrored', 'multi_worker'\). Received: "
                                         r"distribute='bogus'"):
        distribution.strategy_from_name("bogus")


def cluster_member(jobs, task_type, task_id):
    """A stand-in strategy with a cluster resolver, as MultiWorkerMirroredStrategy has."""
    from types import SimpleNamespace

    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(jobs), task_type=task_type, task_id=task_id)
    return SimpleNamespace(cluster_resolver=resolver)


def test_the_chief_and_the_number_of_workers():
    import tensorflow as tf

    from tensorflow_mean_teacher import distribution

    workers = {"worker": ["host1:2222", "host2:2222", "host3:2222"]}
    with_chief = {"chief": ["host0:2222"], **workers}
    assert distribution.is_chief(tf.distribute.get_strategy())
    assert distribution.num_workers(tf.distribute.get_strategy()) == 1
    assert [distribution.is_chief(cluster_member(workers, "worker", i)) for i in range(3)] == \
        [True, False, False]
    assert distribution.num_workers(cluster_member(workers, "worker", 1)) == 3
    assert distribution.is_chief(cluster_member(with_chief, "chief", 0))
    assert not distribution.is_chief(cluster_member(with_chief, "worker", 0))
    assert distribution.num_workers(cluster_member(with_chief, "worker", 0)) == 4


def test_a_global_batch_must_split_equally_over_the_replicas():
    from types import SimpleNamespace

    from tensorflow_mean_teacher import distribution

    distribution.check_global_batch(100, SimpleNamespace(num_replicas_in_sync=4))
    with pytest.raises(ValueError, match="batch_size=100 is not divisible by the 3 replicas in "
                                         "sync. Use a multiple of 3."):
        distribution.check_global_batch(100, SimpleNamespace(num_replicas_in_sync=3))
