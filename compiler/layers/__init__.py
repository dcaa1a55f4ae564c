"""kspec's own Keras layers, registered for serialization under the package name "kspec".

Importing this package imports Keras, so only the build and train stages import
it. A saved model that uses these layers loads with plain
`keras.saving.load_model` once this package has been imported (the import
registers the classes).
"""

from .app_preprocess import AppPreprocess
from .expression import Expression
from .log1p import Log1p
from .maxout import Maxout
from .position import PositionEmbedding, SinePositionEncoding, TokenAndPositionEmbedding

__all__ = ["AppPreprocess", "Expression", "Log1p", "Maxout", "PositionEmbedding", "SinePositionEncoding",
           "TokenAndPositionEmbedding"]
