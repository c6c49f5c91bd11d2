from . import convit, deit, efficientnet, levit, mobile_former, mobilenetv3, mobilevit, sepvit, tnt  # noqa: F401
