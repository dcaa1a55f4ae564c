"""kspec: compile a declarative YAML spec into a Keras 3 model and train it.

The pipeline, one module (or package) per stage, data flowing one way:

    spec.load      YAML text  -> positioned tree (Node values that know file:line:col)
    spec.resolve   tree       -> resolved tree (extends, --set, blocks, repeats, ${expr})
    spec.validate  tree       -> typed `Spec` (JSON Schema + semantic checks)
    build          Spec       -> compiled keras.Model           (imports Keras)
    data           Spec       -> train/validation/test arrays   (imports TensorFlow)
    train          model+data -> run directory
    report/export  run dir    -> metrics, plots, exported models

Nothing before `build` imports TensorFlow or Keras, so `kspec validate` is instant.
"""

__version__ = "0.1.0"
