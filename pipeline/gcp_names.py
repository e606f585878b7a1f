"""The shapes of the Google Cloud names the pipeline accepts, written once.

The command line's checks (pipeline/options.py), the BigQuery warehouse's (pipeline/sinks/
bigquery) and the Flex Template's parameter regexes (pipeline/tools/template_metadata.py) are
built from these. Only syntax that Python, RE2 and Java agree on (Dataflow checks the template's
regexes at launch, in Java). terraform/variables.tf repeats PROJECT_ID in HCL;
tests/test_terraform.py holds it to this one.
"""

from __future__ import annotations

# https://cloud.google.com/resource-manager/docs/creating-managing-projects: 6 to 30 lowercase
# letters, digits or hyphens, starting with a letter, not ending with a hyphen.
PROJECT_ID = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
# https://cloud.google.com/pubsub/docs/create-topic#resource_names: 3 to 255 characters, starting
# with a letter.
PUBSUB_NAME = r"[A-Za-z][A-Za-z0-9_.~+%-]{2,254}"
# https://cloud.google.com/bigquery/docs/datasets#dataset-naming: letters, digits and
# underscores, at most 1,024.
DATASET_ID = r"[A-Za-z0-9_]{1,1024}"
