"""Container images without a Docker engine: build them from Debian packages into ``docker
save`` archives (:mod:`.build`, :mod:`.worker`), store and find them in Keep as
``arv-keepdocker`` does (:mod:`.keep`), and read them back (:mod:`.archive`)."""
