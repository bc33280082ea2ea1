"""Clinical loaders on tables shaped like the real GDC / cBioPortal downloads."""

import logging

import numpy as np
import pytest

from bench.data.datasets import DAYS_PER_MONTH, DatasetError, load_clinical, parse_stage

GDC = """cases.submitter_id\tcases.case_id\tdiagnoses.ajcc_pathologic_stage\tdemographic.vital_status\tdemographic.days_to_death\tdiagnoses.days_to_last_follow_up\ttreatments.treatment_type
TCGA-AA-0001\tuuid-1\tStage IIIA\tDead\t365.25\t'--\tRadiation Therapy, NOS
TCGA-AA-0001\tuuid-1\tStage IIIA\tDead\t365.25\t'--\tPharmaceutical Therapy, NOS
TCGA-AA-0002\tuuid-2\tStage IB\tAlive\t'--\t730.5\t'--
TCGA-AA-0003\tuuid-3\t'--\tAlive\t'--\t100\t'--
TCGA-AA-0004\tuuid-4\tNot Reported\tDead\t50\t'--\t'--
TCGA-AA-0005\tuuid-5\tStage X\tAlive\t'--\t0\t'--
TCGA-AA-0006\tuuid-6\tStage IV\tAlive\t'--\t'--\t'--
TCGA-AA-0007\tuuid-7\tStage II\tAlive\t'--\t100\t'--
TCGA-AA-0007\tuuid-7\tStage II\tAlive\t'--\t300\t'--
TCGA-AA-0008\tuuid-8\tStage IIC\tNot Reported\t'--\t120\t'--
TCGA-AA-0009\tuuid-9\tStage 5\tDead\t-3\t'--\t'--
"""


@pytest.fixture
def gdc(tmp_path):
    p = tmp_path / "clinical.tsv"
    p.write_text(GDC)
    return load_clinical(p, "gdc").set_index("case_id")


def test_gdc_one_row_per_case(gdc):
    assert list(gdc.index) == [f"TCGA-AA-000{i}" for i in range(1, 10)]


def test_gdc_stage_mapping_and_na_markers(gdc):
    st = gdc["stage"]
    assert st["TCGA-AA-0001"] == 2 and st["TCGA-AA-0002"] == 0 and st["TCGA-AA-0006"] == 3
    assert st["TCGA-AA-0007"] == 1 and st["TCGA-AA-0008"] == 1
    for na in ("TCGA-AA-0003", "TCGA-AA-0004", "TCGA-AA-0005", "TCGA-AA-0009"):
        assert np.isnan(st[na]), na


def test_gdc_survival_rules(gdc):
    # dead: days_to_death; alive: days_to_last_follow_up; months = days / (365.25 / 12)
    assert gdc.loc["TCGA-AA-0001", "time"] == pytest.approx(12.0)
    assert gdc.loc["TCGA-AA-0001", "event"] == 1
    assert gdc.loc["TCGA-AA-0002", "time"] == pytest.approx(24.0)
    assert gdc.loc["TCGA-AA-0002", "event"] == 0
    assert gdc.loc["TCGA-AA-0004", "time"] == pytest.approx(50 / DAYS_PER_MONTH)
    # duplicate rows per case: the longest follow-up wins
    assert gdc.loc["TCGA-AA-0007", "time"] == pytest.approx(300 / DAYS_PER_MONTH)
    # zero / negative / missing times and unknown vital status are NA (left out of survival)
    for na in ("TCGA-AA-0005", "TCGA-AA-0006", "TCGA-AA-0008", "TCGA-AA-0009"):
        assert np.isnan(gdc.loc[na, "time"]) and np.isnan(gdc.loc[na, "event"]), na


def test_gdc_unknown_stage_is_reported(tmp_path, caplog):
    p = tmp_path / "clinical.tsv"
    p.write_text(GDC)
    with caplog.at_level(logging.WARNING):
        load_clinical(p, "gdc")
    assert "Stage 5" in caplog.text and "row 12" in caplog.text


def test_old_gdc_column_names(tmp_path):
    p = tmp_path / "clinical.tsv"
    p.write_text("case_submitter_id\tajcc_pathologic_stage\tvital_status\tdays_to_death\tdays_to_last_follow_up\n"
                 "TCGA-BB-0001\tStage IIB\tAlive\t--\t61\n")
    row = load_clinical(p, "gdc").iloc[0]
    assert row["stage"] == 1 and row["event"] == 0 and row["time"] == pytest.approx(61 / DAYS_PER_MONTH)


def test_cbioportal(tmp_path):
    p = tmp_path / "data_clinical_patient.txt"
    p.write_text("#Patient Identifier\tStage\tStatus\tMonths\n#STRING\tSTRING\tSTRING\tNUMBER\n#1\t1\t1\t1\n"
                 "PATIENT_ID\tAJCC_PATHOLOGIC_TUMOR_STAGE\tOS_STATUS\tOS_MONTHS\n"
                 "TCGA-CC-0001\tSTAGE IIIB\t1:DECEASED\t13.5\n"
                 "TCGA-CC-0002\t[Not Available]\t0:LIVING\t40.2\n")
    df = load_clinical(p, "cbioportal").set_index("case_id")
    assert df.loc["TCGA-CC-0001", "stage"] == 2 and df.loc["TCGA-CC-0001", "event"] == 1
    assert df.loc["TCGA-CC-0001", "time"] == pytest.approx(13.5)
    assert np.isnan(df.loc["TCGA-CC-0002", "stage"]) and df.loc["TCGA-CC-0002", "event"] == 0


def test_normalized_and_column_override(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("patient,my_stage,time,event\nP1,2,10.5,1\nP2,Stage I,3,0\n")
    df = load_clinical(p, "normalized", columns={"case_id": "patient", "stage": "my_stage"}).set_index("case_id")
    assert df.loc["P1", "stage"] == 2 and df.loc["P2", "stage"] == 0 and df.loc["P1", "time"] == 10.5


def test_missing_case_column_names_the_fix(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("who,stage\nx,1\n")
    with pytest.raises(DatasetError, match=r"c\.csv.*case id column.*columns: \{case_id"):
        load_clinical(p, "normalized")


@pytest.mark.parametrize("s,want", [("Stage I", 0), ("Stage IA", 0), ("STAGE IB1", 0), ("Stage II", 1),
                                    ("IIIC", 2), ("Stage IV", 3), ("Stage IVB", 3), (3, 3), ("2", 2)])
def test_parse_stage(s, want):
    assert parse_stage(s) == want


@pytest.mark.parametrize("s", ["'--", "--", "Not Reported", "[Not Available]", "Stage X", "", None])
def test_parse_stage_na(s):
    assert np.isnan(parse_stage(s))
