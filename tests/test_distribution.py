"""tf.distribute: two replicas on a global batch take the same step as one device.

Runs in a subprocess because the two logical CPU devices must be set up before TensorFlow starts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tensorflow_mean_teacher import HyperParams, MeanTeacher

hp = HyperParams(input_noise=0.0, translate=False, student_dropout_probability=0.0,
                 teacher_dropout_probability=0.0, rampup_length=0, max_learning_rate=0.003)
rng = np.random.RandomState(0)
x = rng.uniform(size=(3, 8, 32, 32, 3)).astype(np.float32)
# Each half of a global batch of 8 (one replica's share) has 2 labeled and 2 unlabeled rows.
y = np.tile(np.where(np.arange(4) < 2, np.arange(4), -1), 2).astype(np.int32)
stream = tf.data.Dataset.from_tensor_slices((x[1:], np.stack([y, y]))).repeat()


def run(strategy):
    with strategy.scope():
        model = MeanTeacher(hp, width=4, seed=1)
        model.compile()
    model.initialize_from_batch(x[0])
    init_g = [layer.g.numpy() for layer in model.student.weight_norm_layers]
    history = model.fit(stream, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False).history
    weights = [v.numpy() for v in model.student.weights + model.teacher.weights]
    return init_g, {k: v[-1] for k, v in history.items()}, weights, \
        strategy.num_replicas_in_sync


single = run(tf.distribute.get_strategy())
mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print(json.dumps({
    "replicas": [single[3], mirrored[3]],
    "init_g_max_abs": max(float(np.abs(a - b).max()) for a, b in zip(single[0], mirrored[0])),
    "weights_max_rel": max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-6))
                           for a, b in zip(single[2], mirrored[2])),
    "logs": {k: [single[1][k], mirrored[1][k]] for k in single[1]},
}))
"""


def test_two_replicas_match_one_device(tmp_path):
    script = tmp_path / "distributed.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    completed = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    # The data-dependent init sees the whole batch: every replica gets the same g.
    assert result["init_g_max_abs"] == 0.0
    # Two steps: batch means and gradients reduced across replicas, as on one device.
    assert result["weights_max_rel"] < 1e-4, result
    for name, (one, two) in result["logs"].items():
        assert abs(one - two) <= 1e-5 * max(abs(one), 1.0), (name, one, two)
