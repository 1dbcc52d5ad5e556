"""The errors a user can cause, each with a message that names the file, line, key or value.

One light module, so the command-line layer can catch them all without importing
torch, timm or MLflow; `user_error_message` is the one line a user is shown for one.
"""


class FfdiError(ValueError):
    """Bad input from the user: params, data, weights or a tracking address."""


class ConfigError(FfdiError):
    """A params.yaml value that cannot be used; the message names the key."""


class DataError(FfdiError):
    """Bad input data; the message names the file, line and value."""


class BadImage(DataError):
    """An image file that cannot be used: empty, truncated, not an image, or a decompression bomb."""


class MetricError(FfdiError):
    pass


class WeightsError(FfdiError):
    pass


class TrackingError(FfdiError):
    pass


class DeviceError(FfdiError):
    """A device that runtime.device asks for, or that the machine has, which torch cannot use."""


def user_error_message(e: BaseException) -> str:
    message = str(e).strip()
    if "Original Traceback" in message:  # raised in a DataLoader worker: keep its own last line
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message
