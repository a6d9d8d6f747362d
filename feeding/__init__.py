"""feeding: interchangeable image-batch pipelines behind one interface.

    from feeding import FeedConfig, create_feeder, discover
    feeder = create_feeder(discover("data/"), FeedConfig(pipeline="pil", batch_size=64, workers=4))
    for images, labels in feeder:   # uint8 (N, 3, H, W), int64 (N,)
        ...

Importing this package never imports DALI (or Ray): a backend loads in the
branch that needs it.
"""
from feeding.errors import BadFile, BadImageError, FeedError, MissingDependencyError
from feeding.factory import create_feeder
from feeding.backends import PIPELINES, Capabilities, capabilities
from feeding.feeder import FeedConfig, Feeder
from feeding.plan import Plan, make_plan
from feeding.sources import Samples, discover, person_folds, person_split
from feeding.spec import (
    AugSpec,
    CenterCrop,
    ColorJitter,
    HorizontalFlip,
    Normalize,
    RandomResizedCrop,
    Resize,
    Rotate,
    eval_spec,
    train_spec,
)
from feeding.spec_file import SpecFile, SpecFileError, load_spec_file, spec_from_record, spec_record

__all__ = [
    "PIPELINES", "AugSpec", "BadFile", "BadImageError", "Capabilities", "CenterCrop", "ColorJitter", "FeedConfig",
    "FeedError", "Feeder", "HorizontalFlip", "MissingDependencyError", "Normalize", "Plan",
    "RandomResizedCrop", "Resize", "Rotate", "Samples", "SpecFile", "SpecFileError", "capabilities", "create_feeder",
    "discover", "eval_spec", "load_spec_file", "make_plan", "person_folds", "person_split", "spec_from_record",
    "spec_record", "train_spec",
]
