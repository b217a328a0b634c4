"""What noise and finetuning buy: ``attacks`` (FGSM, PGD, PatchFool; one registry, one call), ``corruptions``
(ImageNet-C at the image's resolution), ``evaluation`` (the suite, its report, tolerance curves) and
``cluttered_report`` (what the embedded cluttered model is recorded with)."""
