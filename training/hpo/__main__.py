import sys

from training.hpo.cli import main

sys.exit(main())
