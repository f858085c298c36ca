"""The part of a `MeanTeacher`'s state that Keras' `.keras` / `.weights.h5` saving does not walk.

Keras saves each layer's own variables (`save_own_variables`: `_trainable_variables +
_non_trainable_variables`) and the optimizer's, but not the states of the layers'
`SeedGenerator`s, which are not `KerasSaveable`. Without them a reloaded model redraws the input
noise, translations, flips and dropout masks of its first step. `MeanTeacher.save_own_variables`
adds them to the model's own entry of the file, with the optimizer's variable count, so that a
load that cannot restore the optimizer's state fails instead of silently starting it afresh.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

SEED_KEY_PREFIX = "seed_generator_state_"
OPTIMIZER_COUNT_KEY = "optimizer_variable_count"
NO_OPTIMIZER = -1


def seed_generators(model: keras.Layer) -> list:
    """Every `SeedGenerator` of `model` and its layers, once each, in Keras' layer order (the
    same for two models built from the same config)."""
    found, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in layer._seed_generators:
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append(generator)
    return found


def _optimizer_count(model: keras.Model) -> int:
    optimizer = getattr(model, "optimizer", None)
    return NO_OPTIMIZER if optimizer is None else len(optimizer.variables)


def save_extra_state(model: keras.Model, store) -> None:
    """Writes the seed generators' states and the optimizer's variable count into `store`."""
    for index, generator in enumerate(seed_generators(model)):
        store[f"{SEED_KEY_PREFIX}{index}"] = generator.state
    store[OPTIMIZER_COUNT_KEY] = np.int64(_optimizer_count(model))


def load_extra_state(model: keras.Model, store) -> dict:
    """Restores what `save_extra_state` wrote; returns the rest of `store` (Keras' entries).

    Raises a ValueError when the file cannot restore this model's random generators or
    optimizer.
    """
    keys = list(store.keys())
    seed_keys = [k for k in keys if k.startswith(SEED_KEY_PREFIX)]
    if OPTIMIZER_COUNT_KEY not in keys:
        raise ValueError(
            f"The file has no random-generator and optimizer record for model {model.name!r}: "
            "it was not saved by this version of MeanTeacher, and loading it would restart the "
            "random draws. Received: keys=" + repr(sorted(keys))
        )
    generators = seed_generators(model)
    if len(seed_keys) != len(generators):
        raise ValueError(
            f"Model {model.name!r} has {len(generators)} random generators, but the file holds "
            f"the states of {len(seed_keys)}: it was saved from a model of another "
            f"configuration. Received: saved_generators={len(seed_keys)}"
        )
    saved_count = int(np.asarray(store[OPTIMIZER_COUNT_KEY]))
    count = _optimizer_count(model)
    if saved_count != NO_OPTIMIZER and count == NO_OPTIMIZER:
        # Keras' own choice for load_model(compile=False) and uncompiled models: weights only.
        warnings.warn(
            f"The file holds an optimizer state ({saved_count} variables: the step, the slots) "
            f"that model {model.name!r} cannot take because it is not compiled: training it "
            "would restart the schedules from step 0. Compile it before `load_weights` to "
            "restore that state.",
            stacklevel=4,
        )
    elif saved_count != NO_OPTIMIZER and saved_count != count:
        raise ValueError(
            f"The file holds an optimizer state of {saved_count} variables, but the optimizer of "
            f"model {model.name!r} has {count}: another optimizer, or one not built on the "
            f"student's variables. Received: saved_optimizer_variables={saved_count}"
        )
    for index, generator in enumerate(generators):
        generator.state.assign(store[f"{SEED_KEY_PREFIX}{index}"])
    return {k: store[k] for k in keys if k not in seed_keys and k != OPTIMIZER_COUNT_KEY}
