"""The types of Keras constructor arguments, by argument name (for `compiler.schemagen`).

Why this table exists: Keras has no type annotations, and about a third of its
constructor arguments have a default of `None` or no default at all, so neither
the signature nor the default says what `units`, `kernel_size` or `seed` take.
The schema generator types an argument, in order, by (1) the component kind it
takes (`registry.arg_kind`: initializers, activations, a schedule, a layer...),
(2) this table, (3) the type of its Python default. An argument none of these
types accepts anything: no constraint is better than a wrong guess.

Every schema here is a fragment of a component schema file; `EXPR` refers to the
`expression` definition that each generated file carries, so that the items of
arrays may be parameter references too (`kernel_size: [$k, $k]`). The generator
itself adds `expression` (and `null` where the default is None) around each
argument's type.
"""

from __future__ import annotations

EXPR = {"$ref": "#/definitions/expression"}


def _or_expr(schema: dict) -> dict:
    return {"anyOf": [schema, EXPR]}


def _array(item: dict, n: int | None = None) -> dict:
    schema: dict = {"type": "array", "items": _or_expr(item)}
    if n is not None:
        schema.update(minItems=n, maxItems=n)
    return schema


BOOL = {"type": "boolean"}
STRING = {"type": "string"}
INT = {"type": "integer"}
POS_INT = {"type": "integer", "minimum": 1}
NONNEG_INT = {"type": "integer", "minimum": 0}
NUMBER = {"type": "number"}
NONNEG = {"type": "number", "minimum": 0}
FRACTION = {"type": "number", "minimum": 0, "maximum": 1}             # a probability, 0 and 1 included
DROP_RATE = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}   # a drop rate: 1 would drop everything

POS_INTS = {"anyOf": [POS_INT, _array(POS_INT)]}                      # kernel_size: 3 or [3, 3]
NONNEG_INTS = {"anyOf": [NONNEG_INT, _array(NONNEG_INT)]}
AXIS = {"anyOf": [INT, _array(INT)]}                                  # axis: -1 or [1, 2]
NUMBERS = {"anyOf": [NUMBER, _array(NUMBER)]}
NUMBER_OR_PAIR = {"anyOf": [NUMBER, _array(NUMBER, 2)]}               # factor: 0.2 or [-0.2, 0.3]
NUMBER_PAIR = _array(NUMBER, 2)                                       # value_range: [0, 255]
# ZeroPadding2D/Cropping2D: 1, [1, 2] or [[top, bottom], [left, right]].
PAD_AMOUNTS = {"anyOf": [NONNEG_INT, _array({"anyOf": [NONNEG_INT, _array(NONNEG_INT, 2)]})]}
SHAPE = _array({"anyOf": [{"type": "integer", "minimum": -1}, {"type": "null"}]})   # -1 or null: unknown
INT_OR_SHAPE = {"anyOf": [POS_INT, SHAPE]}
PADDING = {"enum": ["valid", "same", "causal"]}   # "causal" is kept only where the class's docstring names it
DATA_FORMAT = {"enum": ["channels_last", "channels_first"]}
DTYPE = STRING                    # a dtype or dtype policy name: float32, mixed_float16, int32, ...
MONITOR_MODE = {"enum": ["auto", "min", "max"]}
SAVE_FREQ = {"anyOf": [{"const": "epoch"}, POS_INT]}                 # every epoch, or every N batches

# Argument name -> type, wherever the argument appears (layers, optimizers, losses, ...).
ARG_TYPES: dict[str, dict] = {
    # sizes and counts
    "units": POS_INT, "filters": POS_INT, "num_heads": POS_INT, "key_dim": POS_INT, "value_dim": POS_INT,
    "output_dim": POS_INT, "input_dim": POS_INT, "groups": POS_INT, "depth_multiplier": POS_INT,
    "head_dim": POS_INT, "num_query_heads": POS_INT, "num_key_value_heads": POS_INT, "n": POS_INT,
    "num_classes": POS_INT, "height": POS_INT, "width": POS_INT, "max_tokens": POS_INT, "num_bins": POS_INT,
    "num_tokens": POS_INT, "num_oov_indices": NONNEG_INT, "output_sequence_length": POS_INT,
    "sequence_length": POS_INT, "sequence_stride": POS_INT, "frame_length": POS_INT, "frame_step": POS_INT,
    "fft_length": POS_INT, "num_mel_bins": POS_INT, "sampling_rate": POS_INT, "max_number": POS_INT,
    "lora_rank": POS_INT, "sliding_window": POS_INT, "k": POS_INT, "top_k": POS_INT, "num_thresholds": POS_INT,
    "num_labels": POS_INT, "decay_steps": POS_INT, "first_decay_steps": POS_INT, "warmup_steps": NONNEG_INT,
    "ema_overwrite_frequency": POS_INT, "gradient_accumulation_steps": POS_INT, "seed": INT,
    # shapes, windows and axes
    "kernel_size": POS_INTS, "strides": POS_INTS, "pool_size": POS_INTS, "dilation_rate": POS_INTS,
    "size": POS_INTS, "output_size": POS_INTS, "output_padding": NONNEG_INTS, "ngrams": POS_INTS,
    "axis": AXIS, "axes": AXIS, "attention_axes": AXIS, "shared_axes": AXIS,
    "target_shape": SHAPE, "output_shape": INT_OR_SHAPE, "noise_shape": SHAPE, "dims": _array(POS_INT),
    "cropping": PAD_AMOUNTS, "padding": PADDING,
    "equation": STRING, "bias_axes": STRING,
    # rates and probabilities
    "rate": DROP_RATE, "dropout": FRACTION, "recurrent_dropout": FRACTION, "label_smoothing": FRACTION,
    "precision": FRACTION, "recall": FRACTION, "sensitivity": FRACTION, "specificity": FRACTION,
    # flags
    "use_bias": BOOL, "return_sequences": BOOL, "return_state": BOOL, "go_backwards": BOOL,
    "stateful": BOOL, "unroll": BOOL, "center": BOOL, "trainable": BOOL, "autocast": BOOL,
    "from_logits": BOOL, "flash_attention": BOOL, "use_cudnn": {"anyOf": [BOOL, {"const": "auto"}]},
    # enumerations
    "data_format": DATA_FORMAT, "dtype": DTYPE, "reverse_dtype": DTYPE,
    "merge_mode": {"enum": ["sum", "mul", "concat", "ave", None]},
    "reduction": {"enum": ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None]},
    "fill_mode": {"enum": ["reflect", "wrap", "constant", "nearest"]},
    "average": {"enum": ["micro", "macro", "weighted", None]},
    # optimizers and schedules (learning_rate may also be a schedule: registry.arg_kind)
    "learning_rate": NONNEG, "initial_learning_rate": NONNEG, "momentum": NONNEG, "epsilon": NONNEG,
    "clipnorm": NONNEG, "clipvalue": NONNEG, "global_clipnorm": NONNEG, "weight_decay": NONNEG,
    "loss_scale_factor": NUMBER, "decay_rate": NUMBER, "warmup_target": NUMBER,
    "boundaries": _array(NUMBER), "values": _array(NUMBER),
    # numbers whose integer default would otherwise make them integers
    "min_delta": NONNEG, "fill_value": NUMBER, "max_value": NUMBER, "mask_value": NUMBER, "threshold": NUMBER,
    "baseline": NUMBER, "initial_value_threshold": NUMBER, "adam_lr_ratio": NUMBER, "logit_soft_cap": NUMBER,
    "lora_alpha": NUMBER, "mean": NUMBERS, "variance": NUMBERS, "thresholds": NUMBERS,
    "label_weights": _array(NUMBER), "bin_boundaries": _array(NUMBER), "stddev": NONNEG, "max_freq": NONNEG,
    "salt": {"anyOf": [INT, _array(INT, 2)]}, "input_axes": AXIS, "output_axes": AXIS, "num_units": POS_INT,
    "exclude_layers": _array(STRING),
    # augmentation factors: a number, or a [low, high] pair
    "factor": NUMBER_OR_PAIR, "height_factor": NUMBER_OR_PAIR, "width_factor": NUMBER_OR_PAIR,
    "x_factor": NUMBER_OR_PAIR, "y_factor": NUMBER_OR_PAIR, "brightness_factor": NUMBER_OR_PAIR,
    "contrast_factor": NUMBER_OR_PAIR, "saturation_factor": NUMBER_OR_PAIR, "hue_factor": NUMBER_OR_PAIR,
    "addition_factor": NUMBER_OR_PAIR, "threshold_factor": NUMBER_OR_PAIR, "sigma": NUMBER_OR_PAIR,
    "value_range": NUMBER_PAIR,
    # metrics
    "class_id": NONNEG_INT, "ignore_class": INT, "target_class_ids": _array(INT),
    # callbacks
    "monitor": STRING, "patience": NONNEG_INT, "cooldown": NONNEG_INT, "verbose": NONNEG_INT, "min_lr": NONNEG,
    "start_from_epoch": NONNEG_INT, "histogram_freq": NONNEG_INT, "embeddings_freq": NONNEG_INT,
    "filepath": STRING, "filename": STRING, "backup_dir": STRING, "log_dir": STRING, "save_freq": SAVE_FREQ,
    "update_freq": {"anyOf": [{"enum": ["epoch", "batch"]}, POS_INT]}, "profile_batch": {"anyOf": [NONNEG_INT, _array(NONNEG_INT, 2)]},
    "name": STRING,
}

# (class name, argument) -> type, where one name means different things in different classes.
CLASS_ARG_TYPES: dict[tuple[str, str], dict] = {
    ("ZeroPadding1D", "padding"): PAD_AMOUNTS, ("ZeroPadding2D", "padding"): PAD_AMOUNTS,
    ("ZeroPadding3D", "padding"): PAD_AMOUNTS,
    ("Rescaling", "scale"): NUMBER, ("Rescaling", "offset"): NUMBER,
    ("RandomErasing", "scale"): NUMBER_OR_PAIR,
    ("MinMaxNorm", "rate"): FRACTION,
    ("BackupAndRestore", "save_freq"): {"anyOf": [{"enum": ["epoch", False]}, POS_INT]},
    ("ReduceLROnPlateau", "factor"): {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    ("EarlyStopping", "mode"): MONITOR_MODE, ("ModelCheckpoint", "mode"): MONITOR_MODE,
    ("ReduceLROnPlateau", "mode"): MONITOR_MODE,
    ("VarianceScaling", "mode"): {"enum": ["fan_in", "fan_out", "fan_avg"]},
    ("VarianceScaling", "distribution"): {"enum": ["truncated_normal", "untruncated_normal", "uniform"]},
    ("VarianceScaling", "scale"): {"type": "number", "exclusiveMinimum": 0},
    ("RandomFlip", "mode"): {"enum": ["horizontal", "vertical", "horizontal_and_vertical"]},
    ("OrthogonalRegularizer", "mode"): {"enum": ["rows", "columns"]},
}


def arg_type(cls_name: str, arg: str) -> dict | None:
    """The table's type for `arg` of class `cls_name`, or None."""
    return CLASS_ARG_TYPES.get((cls_name, arg), ARG_TYPES.get(arg))
