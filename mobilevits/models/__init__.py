from . import efficientnet, levit, mobile_former, mobilenetv3, mobilevit, sepvit  # noqa: F401
