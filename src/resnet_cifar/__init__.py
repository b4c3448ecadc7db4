"""resnet-cifar: train ResNets on CIFAR-10/100 or any folder of small images."""

__version__ = "0.1.0"
