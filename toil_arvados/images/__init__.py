"""Container images without a Docker engine: build them from Debian packages into ``docker
save`` archives (:mod:`.build`, :mod:`.worker`), store and find them in Keep as
``arv-keepdocker`` does (:mod:`.keep`), and read them back (:mod:`.archive`)."""


def upload_hint(image: str) -> str:
    """The toil-arvados command that builds *image* and stores it in Keep, or "" if none can.

    Error messages about a missing image name it, so a user of the local cluster is not left
    guessing which of our commands makes the image ``arv-keepdocker`` would otherwise upload."""
    from .build import SUITE_RECIPES  # noqa: PLC0415 (keeps this package's import light)
    name = image.removeprefix("docker.io/")
    if name.partition(":")[0] == "toil-arvados/worker":
        return "toil-arvados images build-worker --upload"
    if name in SUITE_RECIPES:
        return f"toil-arvados images build {name} --upload"
    return ""
