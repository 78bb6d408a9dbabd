"""Label-table extension: byte-exact XML, loading, round trip."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import DATA, REF
from totalseg.errors import InputError
from totalseg.write.labelmap import label_table_xml, load_multilabel_nifti, with_label_table

ORACLE_ML = DATA / "oracle_tiny" / "total_ml.nii.gz"
CLASS_MAP_JSON = REF / "resources" / "class_map.json"


def _total_map() -> dict[int, str]:
    if not CLASS_MAP_JSON.exists():
        pytest.skip("reference class_map.json not available")
    raw = json.loads(CLASS_MAP_JSON.read_text())["total"]
    return {int(k): v for k, v in raw.items()}


def _small_image(ext: bool = False) -> nib.Nifti1Image:
    data = np.zeros((4, 5, 6), dtype=np.uint8)
    data[1, 2, 3] = 5
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    if ext:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment"))
    return img


def test_xml_matches_official_bytes():
    if not ORACLE_ML.exists():
        pytest.skip("oracle total_ml.nii.gz not available")
    label_map = _total_map()
    assert len(label_map) == 117
    exts = nib.load(ORACLE_ML).header.extensions
    assert len(exts) == 1 and exts[0].get_code() == 0
    assert label_table_xml(label_map).encode("utf-8") == exts[0].get_content()


def test_xml_format_details():
    xml = label_table_xml({1: "a", 6: "b", 11: "c", 12: "d"})
    assert xml.endswith("</CaretExtension>\n" + " " * 14)
    assert '<Label Key="6" Red="1.0" Green="0.5019607843137255" Blue="0.0" Alpha="1"><![CDATA[b]]></Label>\n' in xml
    assert 'Key="11" Red="0.7254901960784313" Green="0.6666666666666666" Blue="0.6078431372549019"' in xml
    assert '<Label Key="12" Red="1.0" Green="0.0" Blue="0.0"' in xml


def test_load_official_file():
    if not ORACLE_ML.exists():
        pytest.skip("oracle total_ml.nii.gz not available")
    img, labels = load_multilabel_nifti(ORACLE_ML)
    assert isinstance(img, nib.Nifti1Image)
    assert labels == _total_map()
    assert list(labels) == sorted(labels)
    # a loaded image works as well as a path
    assert load_multilabel_nifti(img)[1] == labels


def test_round_trip(tmp_path):
    img = _small_image(ext=True)
    before = img.header.binaryblock
    label_map = {5: "liver", 90: "brain", 3: "kidney_left"}
    out = with_label_table(img, label_map)
    # input untouched
    assert len(img.header.extensions) == 1 and img.header.binaryblock == before
    assert [e.get_code() for e in out.header.extensions] == [6, 0]
    assert np.array_equal(out.affine, img.affine)
    assert out.get_data_dtype() == img.get_data_dtype()
    assert out.header["qform_code"] == 1
    path = tmp_path / "seg.nii.gz"
    nib.save(out, path)
    loaded, labels = load_multilabel_nifti(path)
    assert labels == label_map and list(labels) == [5, 90, 3]
    assert np.array_equal(np.asanyarray(loaded.dataobj), img.get_fdata().astype(np.uint8))
    # writing again replaces the table instead of stacking a second one
    again = with_label_table(loaded, {1: "spleen"})
    assert [e.get_code() for e in again.header.extensions] == [6, 0]
    assert load_multilabel_nifti(again)[1] == {1: "spleen"}


def test_no_label_table(tmp_path):
    path = tmp_path / "plain.nii.gz"
    nib.save(_small_image(ext=True), path)
    with pytest.raises(InputError) as info:
        load_multilabel_nifti(path)
    message = str(info.value)
    assert "plain.nii.gz" in message and "label table" in message and "\n" not in message
    with pytest.raises(InputError):
        load_multilabel_nifti(tmp_path / "missing.nii.gz")
