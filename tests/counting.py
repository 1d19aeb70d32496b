"""A backend that counts the rows it answers itself, independently of the Oracle's own count (for tests of query
accounting)."""


class CountingBackend:
  """Wraps a batched backend x (N, ...) -> logits; `rows` is how many inputs it answered."""

  def __init__(self, backend):
    self.backend, self.rows = backend, 0

  def __call__(self, x):
    self.rows += len(x)
    return self.backend(x)
