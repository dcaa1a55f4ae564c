"""The front half of the pipeline: load, resolve and validate a spec. No TensorFlow here."""
