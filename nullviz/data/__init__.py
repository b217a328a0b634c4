"""Data: every image nullviz works on, as PIL RGB images (or tensors made by the model's own timm transform).

``digits`` (the embedded 32-px digits and their fixed split) · ``scenes`` (the cluttered-digit scenes, box
known) · ``images`` (sample photographs, sample digits and scenes, uploads and files) · ``sets`` (data sets by
spec — one :class:`DataSpec` parser over one registry of sources, ``DATA_SOURCES`` —, the model's own data, the fit / validation / test images of a
synthesis, training splits, uploaded zips).
"""

from . import scenes
from .digits import (DIGITS_CLASS_NAMES, DIGITS_HELDOUT_FRACTION, DIGITS_SPLIT_SEED, ImageListDataset, digits_dataset,
                     digits_indices, digits_split)
from .images import (MAX_IMAGE_PIXELS, SAMPLE_PHOTOS, LabelledImage, distinct_images, downscale_note, image_digest,
                     load_image_bytes, load_image_file, resolve_image,
                     sample_image, sample_image_names, sample_photos_dataset)
from .sets import (DATA_SOURCES, DOWNLOADED_DATA, EMBEDDED_DATA, EMBEDDED_DATA_WORDS, ONE_IMAGE_SOURCE, OWN_SOURCE,
                   PHOTOS_SOURCE, SYNTHESIS_SOURCES, SYNTHESIS_TEST_IMAGES, SYNTHESIS_VALIDATION_IMAGES, VALIDATION_SEED,
                   DataSource, DataSpec, SynthesisSets, check_augmentable, check_data_spec, cifar10, extract_image_folder_zip,
                   held_out_or_sample_photos, image_folder,
                   load_dataset, model_own_data, no_own_data_message, own_data, own_train_validation,
                   register_data_source, split_dataset, synthesis_source_label, synthesis_sets, synthesis_sources,
                   train_heldout)
