"""Flex Template entry point: the launcher runs ``python /template/main.py --name=value ...`` with
the template's parameters and the job's environment (runner, project, region, temp and staging
locations, sdk_container_image, ...); the installed package does the rest, as ``python -m
pipeline`` does locally."""

import sys

from pipeline.run import main

if __name__ == "__main__":
    sys.exit(main())
