"""CVAT's own "COCO 1.0" import (``cvat.apps.dataset_manager.task.import_task_annotations``) of a zip into a task,
for a CVAT whose import endpoint is broken because PyPI datumaro stands in for CVAT's datumaro fork (the no-Docker
CVAT of ``../shared/docs/cvat-real.md``: ``POST /api/tasks/{id}/annotations?format=COCO 1.0`` answers 500).

Three places where PyPI datumaro 1.11's API differs from the fork's are bridged in this process only (no CVAT file
is changed, the server is not touched); everything else, datumaro's COCO reader and CVAT's conversion of what it
reads into shapes in CVAT's database, is CVAT's. Run with CVAT's environment from CVAT's source folder:

    cd $CVAT_SRC && $CVAT_VENV/bin/python scripts/cvat_import_probe.py DATASET.zip TASK_ID
"""

import sys


def main(archive: str, task_id: int) -> None:
    import django

    django.setup()
    import datumaro.components.importer as importer

    importer.Importer.get_file_extensions = classmethod(lambda cls: [])  # 1: PyPI's Importer base raises here
    import cvat.apps.dataset_manager.formats.coco as coco_format

    coco_format.detect_dataset = lambda *args, **kwargs: None  # 2: a pre-check using the fork's registry API
    stream = coco_format.StreamDataset
    import_from = stream.import_from.__func__

    class _Stream(stream):
        @classmethod
        def import_from(cls, *args, require_iscrowd=None, **kwargs):  # 3: a keyword only the fork's reader takes
            return import_from(stream, *args, **kwargs)

    coco_format.StreamDataset = _Stream
    from cvat.apps.dataset_manager.task import import_task_annotations

    import_task_annotations(archive, task_id, "COCO 1.0", conv_mask_to_poly=False)
    print(f"imported {archive} into task {task_id}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
