"""`python -m vision_service`: configuration from the environment, then serve until SIGTERM."""

import logging
import sys

from mediabot.config import ConfigError
from mediabot.logs import configure_logging
from vision_service.config import Settings
from vision_service.server import serve


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        configure_logging("vision")
        logging.getLogger("vision_service").error("bad configuration", extra={"error": str(error)})
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
