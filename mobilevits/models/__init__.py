from . import mobilenetv3, mobilevit  # noqa: F401
