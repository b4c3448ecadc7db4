"""Dataset constants in one place, each with its provenance.

Normalisation statistics are per-channel mean and standard deviation of the *training* split,
computed over all pixels of all 50,000 training images scaled to [0, 1]
(`resnet-cifar data stats` recomputes them from whatever data you have).
The widely copied CIFAR-10 std (0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the
dataset std; the true values are below.
"""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# CIFAR-100 training split, computed the same way.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

IMAGE_SIZE = 32

# Official archives (https://www.cs.toronto.edu/~kriz/cifar.html) and their MD5 sums,
# the same ones torchvision.datasets.CIFAR10/CIFAR100 check.
CIFAR_SOURCES = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "archive_md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": [
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ],
        "test": [("test_batch", "40351d587109b95175f43aff81a1287e")],
        "meta": ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        "label_key": "labels",
        "names_key": "label_names",
        "env": "RESNET_CIFAR_CIFAR10_URL",
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "archive_md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": [("train", "16019d7e3df5f24257cddd939b257f8d")],
        "test": [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")],
        "meta": ("meta", "7973b15100ade9c7d40fb424638fde48"),
        "label_key": "fine_labels",
        "names_key": "fine_label_names",
        "env": "RESNET_CIFAR_CIFAR100_URL",
    },
}

DATASETS = ("cifar10", "cifar100", "folder")

# airbench94_muon.py (github.com/KellerJordan/cifar10-airbench, March 2025):
# Muon(filter_params, lr=0.24, momentum=0.6, nesterov=True); --muon-lr / --muon-momentum defaults (muon.py)
MUON_LR = 0.24
MUON_MOMENTUM = 0.6
