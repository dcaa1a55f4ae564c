"""`kspec serve`'s defaults and limits, stated once (the CLI's help reads them; this imports nothing)."""

PORT = 8501                  # TF Serving's REST port
MAX_BATCH_SIZE = 32          # examples per batch
MAX_LATENCY_MS = 5.0         # how long a request waits for others to join its batch
MAX_QUEUE = 1024             # requests waiting for the model before 503 busy
MAX_BODY_BYTES = 16 << 20    # 16 MiB: larger bodies get 413
MAX_IMAGE_PIXELS = 1 << 24   # 16.7 million pixels (4096 x 4096), checked in the header before decoding
MAX_EXAMPLES = 4096          # examples in one request (at least --max-batch-size)
MAX_VALUES = 1 << 24         # numbers in one request, after images are decoded (64 MiB of float32)
GRACEFUL_SECONDS = 30        # how long SIGTERM waits for the requests in flight
