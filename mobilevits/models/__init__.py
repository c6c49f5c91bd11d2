from . import efficientnet, levit, mobilenetv3, mobilevit, sepvit  # noqa: F401
