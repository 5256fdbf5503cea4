//! What `epi datasets` fetches, verifies and lists: for each suite with a data set, the remote
//! files (Hugging Face parquet exports, or the original files on GitHub at pinned commits), where
//! they go in the data directory (the layout the suites read), and how each is checked. The HTTP
//! transfer itself is the CLI's; everything here works offline.

use crate::{arc_challenge, hellaswag, mmlu};
use epi_core::suite::SuiteError;
use parquet::file::reader::{FileReader, SerializedFileReader};
use sha1::{Digest, Sha1};
use std::path::{Path, PathBuf};

/// Where a data set is downloaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The Hugging Face dataset lm-eval loads (`cais/mmlu`, `allenai/ai2_arc`, `Rowan/hellaswag`),
    /// as parquet; checked by row count.
    HuggingFace,
    /// The original files at a pinned GitHub commit; checked by git blob id (content hash).
    Github,
}

impl Source {
    /// `hf` or `github`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::HuggingFace => "hf",
            Source::Github => "github",
        }
    }

    /// Parses `hf` or `github`.
    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "hf" => Some(Source::HuggingFace),
            "github" => Some(Source::Github),
            _ => None,
        }
    }
}

/// How a downloaded file is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The git blob id of the content (`git hash-object FILE`).
    GitBlob(&'static str),
    /// A parquet file with this many rows.
    ParquetRows(usize),
}

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// URLs to try in order (a fallback serves the same rows in another layout or branch).
    pub urls: Vec<String>,
    /// Path under the data directory, `/`-separated.
    pub dest: String,
    /// How to verify it.
    pub check: Check,
}

/// A suite's data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSpec {
    /// The suite's registry key.
    pub suite: &'static str,
    /// Its directory under the data directory.
    pub subdir: &'static str,
    /// What it is.
    pub title: &'static str,
    /// Its licence.
    pub licence: &'static str,
    /// The source used when none is asked for.
    pub default_source: Source,
}

/// The suites with a data set to fetch.
pub const DATASETS: [DatasetSpec; 3] = [
    DatasetSpec {
        suite: mmlu::KEY,
        subdir: mmlu::SUBDIR,
        title: "MMLU (Hendrycks et al. 2021), dev and test splits of 57 subjects",
        licence: "MIT (Copyright (c) 2020 Dan Hendrycks)",
        default_source: Source::HuggingFace,
    },
    DatasetSpec {
        suite: arc_challenge::KEY,
        subdir: arc_challenge::SUBDIR,
        title: "ARC-Challenge (AI2 Reasoning Challenge, ARC-V1-Feb2018), train/validation/test",
        licence: "CC BY-SA 4.0 (allenai/ai2_arc dataset card)",
        default_source: Source::HuggingFace,
    },
    DatasetSpec {
        suite: hellaswag::KEY,
        subdir: hellaswag::SUBDIR,
        title: "HellaSwag (Zellers et al. 2019), train and validation splits",
        licence: "MIT (Copyright (c) 2019 Rowan Zellers)",
        default_source: Source::Github,
    },
];

/// The data set of suite `key`, if it has one.
pub fn spec(key: &str) -> Option<&'static DatasetSpec> {
    DATASETS.iter().find(|d| d.suite == key)
}

/// Number of test questions per MMLU subject (dev has 5 each).
pub const MMLU_TEST_ROWS: [(&str, usize); 57] = [
    ("abstract_algebra", 100),
    ("anatomy", 135),
    ("astronomy", 152),
    ("business_ethics", 100),
    ("clinical_knowledge", 265),
    ("college_biology", 144),
    ("college_chemistry", 100),
    ("college_computer_science", 100),
    ("college_mathematics", 100),
    ("college_medicine", 173),
    ("college_physics", 102),
    ("computer_security", 100),
    ("conceptual_physics", 235),
    ("econometrics", 114),
    ("electrical_engineering", 145),
    ("elementary_mathematics", 378),
    ("formal_logic", 126),
    ("global_facts", 100),
    ("high_school_biology", 310),
    ("high_school_chemistry", 203),
    ("high_school_computer_science", 100),
    ("high_school_european_history", 165),
    ("high_school_geography", 198),
    ("high_school_government_and_politics", 193),
    ("high_school_macroeconomics", 390),
    ("high_school_mathematics", 270),
    ("high_school_microeconomics", 238),
    ("high_school_physics", 151),
    ("high_school_psychology", 545),
    ("high_school_statistics", 216),
    ("high_school_us_history", 204),
    ("high_school_world_history", 237),
    ("human_aging", 223),
    ("human_sexuality", 131),
    ("international_law", 121),
    ("jurisprudence", 108),
    ("logical_fallacies", 163),
    ("machine_learning", 112),
    ("management", 103),
    ("marketing", 234),
    ("medical_genetics", 100),
    ("miscellaneous", 783),
    ("moral_disputes", 346),
    ("moral_scenarios", 895),
    ("nutrition", 306),
    ("philosophy", 311),
    ("prehistory", 324),
    ("professional_accounting", 282),
    ("professional_law", 1534),
    ("professional_medicine", 272),
    ("professional_psychology", 612),
    ("public_relations", 110),
    ("security_studies", 245),
    ("sociology", 201),
    ("us_foreign_policy", 100),
    ("virology", 166),
    ("world_religions", 171),
];

/// Git blob ids of the original MMLU CSVs (`data.tar` content) as `(subject, dev, test)`, from
/// raybears/cot-transparency @ 3725891431f036e4cf7469a91135383701f9363b `data/mmlu/`.
pub const MMLU_CSV_BLOBS: [(&str, &str, &str); 57] = [
    (
        "abstract_algebra",
        "f531d7fd110817dcd34f2f5ee194c891b1bab1bd",
        "2698dbe2bf963142b9ef5cdcced92906541a48ca",
    ),
    (
        "anatomy",
        "d11930515c2a1d1b521d19f853ef3f13bef720ba",
        "abf5d6d297cebe9c29a51141deaf57e1889d6a01",
    ),
    (
        "astronomy",
        "178226f21a061d2b5466f44ea7124d6df2ac4fa5",
        "23dd92361b2e26a8e10bccd93bc15227a546e900",
    ),
    (
        "business_ethics",
        "6611405296cd052e185d209169e746f17a7a1d10",
        "138903eab98787e3b59515d294e5852d8b28aa38",
    ),
    (
        "clinical_knowledge",
        "50cfa71e6848047aa054179f19002ded5d4c5961",
        "7bc6b74522a93e06f6359c6709457b0d1cebd8b7",
    ),
    (
        "college_biology",
        "45904f1ec4a17f7e9722e0e5f31883ba37d62a21",
        "76326874de4de1eadbef5fd5b3bc41dae9dd54d9",
    ),
    (
        "college_chemistry",
        "7b3b3733c656e4588ed0eb084c21ce251be3c53d",
        "526293dae4499e531c4c73dd83d52ed60e610a9a",
    ),
    (
        "college_computer_science",
        "1444269dae1e8771c4d6e8326c2867e4918884ea",
        "93e5af9919ad4c52216bac7d1b8506c322090dbb",
    ),
    (
        "college_mathematics",
        "c6d79fb1270a3bae2a2b70342c5c6be1efc77d8d",
        "1363a96be92cd98d39a0d68dc5b938c726f1d890",
    ),
    (
        "college_medicine",
        "d1ef6d6e0e73631a75bcb3de829b0ef7990ecf01",
        "1ae6c8a064b971c4f170367b884d533704495c6c",
    ),
    (
        "college_physics",
        "e11b26d1b41d4bbbb4fabd9cf53d127365651edd",
        "fe91ee321d0f014819e90352bbe96d95eec2e4e3",
    ),
    (
        "computer_security",
        "728ce71e1f51d16f573f75e5e5e038466a446f9b",
        "9deb23981994c611ef730e14c66cabb4d84462cb",
    ),
    (
        "conceptual_physics",
        "445ed96b8599b868b7c568b7da4654b0f20a642d",
        "d966e7209efd9694e8c5e96d369e210aa5aaadd7",
    ),
    (
        "econometrics",
        "3313762594f92e95e97da928e402e0931c069e0d",
        "d5c9db58dd383ec5d59e8c15ded1a8ad96f83d14",
    ),
    (
        "electrical_engineering",
        "c57fed3480fa44f1c09adea77d64c38ff47dc29a",
        "1b704bf5963b562233d5561e36f5bfa3d36e47a2",
    ),
    (
        "elementary_mathematics",
        "c9770b274f63af4e9964710072cbb4e2eeb26db7",
        "aac67872b65c95848063e4a43e82ff7e7ab7b1d5",
    ),
    (
        "formal_logic",
        "9ad1cd1c7fa29b968de4e436746190f4dd9c2f45",
        "56c29f9fdfdd345049cfe9a7c64141c5a11a542f",
    ),
    (
        "global_facts",
        "10fe9039916e90967629d4fb9736734abaab34f4",
        "578ad241bb80bbde3b30e79bcd58080ff32a644a",
    ),
    (
        "high_school_biology",
        "601182b6440d18a84ab74fde2925cce0ec6a75ea",
        "a2868ef0056d33b4c479f6595128da7e0514063e",
    ),
    (
        "high_school_chemistry",
        "4554e57b02188a2bf45164f0ce7789612453c5ee",
        "8e4642b29a4aefdf3bb34cb382c431acf84abbb2",
    ),
    (
        "high_school_computer_science",
        "e1c280e02e8f1eaf7a6639e6580920ca7620056e",
        "fbebcfa65a402be75209bbc02bb7486d8e2f3b4b",
    ),
    (
        "high_school_european_history",
        "ffff7095df96e2d754048f6062625b7140abe0db",
        "adc64fa18afb998ce83e0a73f89a6563db9fa270",
    ),
    (
        "high_school_geography",
        "9b0bf3bc50b2fa6b35a5a3d56d05339e02f66006",
        "f38067fa7b282d5620d56b8b01d895daeb9c9045",
    ),
    (
        "high_school_government_and_politics",
        "9fd5c5ddbb93be500d267c36d72b8768a9ef847a",
        "6444a35b10dbed7b58e818ff9744536fd152417d",
    ),
    (
        "high_school_macroeconomics",
        "00c4b2e780fadc205cba796af12fd386c37dba9a",
        "d979353d4dc1219dd59e3987c555b639dcaec92d",
    ),
    (
        "high_school_mathematics",
        "7e787054c2e269ddd5ef81157ebca8586e0ca4ef",
        "0787315f71c566a55db8936f6af276028c8ebd9b",
    ),
    (
        "high_school_microeconomics",
        "7354420cf1cb49186a2ded523ce7facb37a56b7b",
        "367d8dd7f80b0bd459bfcbabd7f7dd435b7d9355",
    ),
    (
        "high_school_physics",
        "c9e475bea6ccb57f5b1bee59e36605539faf7dbb",
        "320f7aebf9c68ff68afdcbd567f3924118e796ee",
    ),
    (
        "high_school_psychology",
        "31c32327ffe373ec21721b590d174eb5862b9527",
        "99270d59226ff88afc2d7624758efa657259e8a4",
    ),
    (
        "high_school_statistics",
        "1fdfbccfc613ea1408f5195eba7fd694f1d9b3d4",
        "60c788232add93761c19767e9fb2a3970190da3c",
    ),
    (
        "high_school_us_history",
        "14c515c0beae98aa693bf0c39022aae1fd367b26",
        "f9950f8b58f719ca78f33e7a88037ae1004521af",
    ),
    (
        "high_school_world_history",
        "615765ba5401c3f40a6ddbc4742e641e117bac75",
        "820494a1149a7ba6991cbf46e5a65d1f98d15e02",
    ),
    (
        "human_aging",
        "548a9dbfb44fc5f92847ed6001714fb1cdad4787",
        "436168b525fed3822444d0f5f425f216d32d1f6a",
    ),
    (
        "human_sexuality",
        "dea0dd8999193a4c6f28c9e22038cb7be142a003",
        "481f2c1ceac13b35110e7965a60890442c3ce681",
    ),
    (
        "international_law",
        "af1d6b5782658223ac3e811f731266cf96fcbcb7",
        "7da5e47f7ce878445ad909a5c88317470b0fe4cf",
    ),
    (
        "jurisprudence",
        "d032d3ad518262d35f5385e863cb107525747d50",
        "74c18b7b418fef0423214972a6ac36a3e7558296",
    ),
    (
        "logical_fallacies",
        "b3636ba1a52b2cd483de85835e9167e656341136",
        "ecbdc284e6ab90987a0e3615e90d4dfb4b6ebd43",
    ),
    (
        "machine_learning",
        "0a0c5593e7871c40e6d80cc37e1638ff30ac6aeb",
        "f6637a7f73d62fbf429ecdb65d8e77f80b1cc44d",
    ),
    (
        "management",
        "ffe8a084be1b658d59995b6f87af58ace97a5916",
        "486ccbf7b799f3aba059c9c046d58dfec9e2843d",
    ),
    (
        "marketing",
        "38f28b385540a4d1c30914c3bd18f78328e1728f",
        "a227c031fa2ae668a4017cdc9c9fe9142c5fc6de",
    ),
    (
        "medical_genetics",
        "c6726084d26cae4ae1d04ff80eb162507d92a659",
        "884ab512690d3cb78129140ceab51571c6c0be11",
    ),
    (
        "miscellaneous",
        "7013b92177ef42151aeb6c7e88f6a603014810e8",
        "25d763aefc777931a23c5b7e1b82cd80cb021881",
    ),
    (
        "moral_disputes",
        "2a9bcf2cb4cafbe916865e4aba3b0828cdbdcc1f",
        "38ada4549fcba6e990f1c7b0cdada500fcfe8dcb",
    ),
    (
        "moral_scenarios",
        "b8b9f42ab922a3968bb7d2715376a7cce6dcb625",
        "47d22c816176c461ba4ed5e40695622436e7ff83",
    ),
    (
        "nutrition",
        "6552518e577aa951a756fbf8d13c065fa2694e46",
        "b78a6578e45e0e5f3e00bd08f9306a6d95105eb5",
    ),
    (
        "philosophy",
        "a0c5ca48ea97687b6e56b642b43edc23bd3426af",
        "2ac2437311819b4b33de8c235e236cef48180fac",
    ),
    (
        "prehistory",
        "fffb49ac31d62b28be7f31c4284d5170f7d28583",
        "94720ae3614aaa935356d8822bab8abe3c98692b",
    ),
    (
        "professional_accounting",
        "6317b3a59ea2369418e781f17c0f0699c6285e75",
        "8e3b3e37f186ad3f8342d6ab533a6ddc19fd479c",
    ),
    (
        "professional_law",
        "0ee107807e5b6fe71568f1f92a38f49431c624ec",
        "f51a517ad1f255a59893cc856bdc7e23f0b2e2e8",
    ),
    (
        "professional_medicine",
        "5de2fd454536abeeeb71587a83598e68f478419f",
        "25f5a5bcfe151c13eefa07d5861fc2a0d6692a9a",
    ),
    (
        "professional_psychology",
        "c91d883dc7b699c5ac91d123a21ac01f539b5b16",
        "26602270ebe74ab28e2ac5d4b63de8003cc7fef9",
    ),
    (
        "public_relations",
        "989348b0422cc019c2c423eef90543f5bfcc5125",
        "ad58e636225085bec7764c04434c30e595cf6069",
    ),
    (
        "security_studies",
        "3382f77ded50365cb1c03b54d442c2d5c768e030",
        "2bb6dc004b5cdd7860ac182597aceb72916b4950",
    ),
    (
        "sociology",
        "b1dcd8495350f9db66741942e648647315e485b7",
        "692712d615487f35e68669b8f1db1c8388a24956",
    ),
    (
        "us_foreign_policy",
        "d33dc393e287924aff2137fe1562deab8ff9abc5",
        "d575b1e0ea2dbf92ecb24e82d152c1ff09c29864",
    ),
    (
        "virology",
        "ca554f31b1a0900237a81d60a33b3a8831469733",
        "426fdc7af98bfbf26f652bc7a46ab0b931bfb3e8",
    ),
    (
        "world_religions",
        "c517402e1a1f877754e1fa6fd0dcd865a6f50f77",
        "07850529641d15bb8f3ffe24f0b8c49fcdab88d6",
    ),
];

const HF: &str = "https://huggingface.co/datasets";
/// The branch Hugging Face fills with its automatic parquet conversion (fallback URL).
const HF_CONVERTED: &str = "resolve/refs%2Fconvert%2Fparquet";
const MMLU_GITHUB: &str = "https://raw.githubusercontent.com/raybears/cot-transparency/3725891431f036e4cf7469a91135383701f9363b/data/mmlu";
const ARC_GITHUB: &str = "https://raw.githubusercontent.com/pbevan1/introspection_self_prediction/af20e26a05e38bd45a9549abb280bd9a48f21d26/other_evals/counterfactuals/datasets/arc_challenge";
const HELLASWAG_GITHUB: &str =
    "https://raw.githubusercontent.com/rowanz/hellaswag/a29ff8e9a04bba4bd6588223785ce105328adc57/data";

/// A Hugging Face parquet file: the Hub layout `<config>/<split>-00000-of-00001.parquet` on
/// `main`, with the automatic conversion `<config>/<split>/0000.parquet` as fallback.
fn hf_parquet(repo: &str, config: &str, split: &str, dest_dir: &str, rows: usize) -> RemoteFile {
    RemoteFile {
        urls: vec![
            format!("{HF}/{repo}/resolve/main/{config}/{split}-00000-of-00001.parquet"),
            format!(
                "{HF}/{repo}/{HF_CONVERTED}/{}/{split}/0000.parquet",
                if config == "data" { "default" } else { config }
            ),
        ],
        dest: format!("{dest_dir}/{split}-00000-of-00001.parquet"),
        check: Check::ParquetRows(rows),
    }
}

/// The files of suite `key` from `source`, or why there are none.
pub fn files(key: &str, source: Source) -> Result<Vec<RemoteFile>, String> {
    let Some(spec) = spec(key) else {
        let known: Vec<&str> = DATASETS.iter().map(|d| d.suite).collect();
        return Err(format!(
            "suite `{key}` has no data set to fetch (those with one: {})",
            known.join(", ")
        ));
    };
    let sub = spec.subdir;
    Ok(match (key, source) {
        (mmlu::KEY, Source::HuggingFace) => MMLU_TEST_ROWS
            .iter()
            .flat_map(|&(s, test)| {
                [("dev", 5), ("test", test)].map(|(split, rows)| {
                    hf_parquet("cais/mmlu", s, split, &format!("{sub}/{s}"), rows)
                })
            })
            .collect(),
        (mmlu::KEY, Source::Github) => MMLU_CSV_BLOBS
            .iter()
            .flat_map(|&(s, dev, test)| {
                [("dev", dev), ("test", test)].map(|(split, blob)| RemoteFile {
                    urls: vec![format!("{MMLU_GITHUB}/{split}/{s}_{split}.csv")],
                    dest: format!("{sub}/{split}/{s}_{split}.csv"),
                    check: Check::GitBlob(blob),
                })
            })
            .collect(),
        (arc_challenge::KEY, Source::HuggingFace) => {
            [("train", 1119), ("validation", 299), ("test", 1172)]
                .iter()
                .map(|&(split, rows)| {
                    hf_parquet(
                        "allenai/ai2_arc",
                        "ARC-Challenge",
                        split,
                        &format!("{sub}/ARC-Challenge"),
                        rows,
                    )
                })
                .collect()
        }
        (arc_challenge::KEY, Source::Github) => [
            ("Train", "f85d79d082a94a989ceb7eb56c1c21d022380a52"),
            ("Dev", "ce2c8f9f6ea5b381a5883b93b10f7947b7fc4b50"),
            ("Test", "682d744c6f6d72f4a41d67baf8638cb1d924d22f"),
        ]
        .iter()
        .map(|&(split, blob)| RemoteFile {
            urls: vec![format!("{ARC_GITHUB}/ARC-Challenge-{split}.jsonl")],
            dest: format!("{sub}/ARC-Challenge-{split}.jsonl"),
            check: Check::GitBlob(blob),
        })
        .collect(),
        (hellaswag::KEY, Source::Github) => [
            ("train", "1997e15fe638ef2aeec6993471159295cd75aab7"),
            ("val", "0f5ee25d72216f12317d5d8a7b92deafa423d81e"),
        ]
        .iter()
        .map(|&(split, blob)| RemoteFile {
            urls: vec![format!("{HELLASWAG_GITHUB}/hellaswag_{split}.jsonl")],
            dest: format!("{sub}/hellaswag_{split}.jsonl"),
            check: Check::GitBlob(blob),
        })
        .collect(),
        (hellaswag::KEY, Source::HuggingFace) => [("train", 39905), ("validation", 10042)]
            .iter()
            .map(|&(split, rows)| {
                hf_parquet(
                    "Rowan/hellaswag",
                    "data",
                    split,
                    &format!("{sub}/data"),
                    rows,
                )
            })
            .collect(),
        _ => {
            return Err(format!(
                "suite `{key}` has no files listed for source `{}`",
                source.as_str()
            ))
        }
    })
}

/// `git hash-object`: SHA-1 of `blob <len>\0` followed by the content, in hex.
pub fn git_blob_id(content: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a file; on success says what was checked (`git blob 0f5ee25d… ok, 11.2 MB`), else why it
/// does not match.
pub fn verify(path: &Path, check: &Check) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    match check {
        Check::GitBlob(want) => {
            let content = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let got = git_blob_id(&content);
            if got == *want {
                Ok(format!(
                    "git blob {} matches, {}",
                    &want[..12],
                    human_size(size)
                ))
            } else {
                Err(format!(
                    "{}: git blob id {got}, expected {want} (the content differs from the pinned original)",
                    path.display()
                ))
            }
        }
        Check::ParquetRows(want) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let reader = SerializedFileReader::new(file)
                .map_err(|e| format!("{}: not a readable parquet file: {e}", path.display()))?;
            let got = reader.metadata().file_metadata().num_rows();
            if got == *want as i64 {
                Ok(format!("{want} rows, {}", human_size(size)))
            } else {
                Err(format!("{}: {got} rows, expected {want}", path.display()))
            }
        }
    }
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    }
}

/// The `SOURCE.md` written beside fetched files: what, from where, how checked, licence.
pub fn source_note(
    spec: &DatasetSpec,
    source: Source,
    files: &[(RemoteFile, String, String)],
    fetched_at: &str,
) -> String {
    let mut s = format!(
        "# {}\n\nFetched by `epi datasets fetch --suite {} --source {}` on {fetched_at}.\n\n\
         Licence: {}.\n\n| file | from | check |\n|---|---|---|\n",
        spec.title,
        spec.suite,
        source.as_str(),
        spec.licence
    );
    for (f, url, checked) in files {
        s.push_str(&format!("| {} | {url} | {checked} |\n", f.dest));
    }
    s
}

/// Rows of one split found on disk, with the full data set's count when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitCount {
    /// Split name.
    pub split: String,
    /// Rows read.
    pub rows: usize,
    /// Rows of the full data set.
    pub expected: Option<usize>,
}

impl SplitCount {
    fn new(split: &str, rows: usize, expected: usize) -> SplitCount {
        SplitCount {
            split: split.to_string(),
            rows,
            expected: Some(expected),
        }
    }

    /// Whether the split is complete.
    pub fn complete(&self) -> bool {
        self.expected.is_none_or(|e| e == self.rows)
    }
}

/// What `epi datasets list` shows for one suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Data found and read.
    Present {
        /// Which files, in which format.
        source: String,
        /// Rows per split.
        splits: Vec<SplitCount>,
        /// Anything incomplete (missing MMLU subjects).
        note: Option<String>,
    },
    /// No data: where it was looked for, how to get it.
    Missing(String),
    /// Data found but unreadable.
    Invalid(String),
}

/// One suite's data on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryRow {
    /// Suite key.
    pub suite: &'static str,
    /// What was found.
    pub found: Found,
}

fn failure(e: SuiteError) -> Found {
    match e {
        SuiteError::MissingData { message, .. } => Found::Missing(message),
        other => Found::Invalid(other.to_string()),
    }
}

/// Reads every data set in `data_dir` (or the default directory) and counts its rows.
pub fn inventory(data_dir: Option<&Path>) -> Vec<InventoryRow> {
    DATASETS
        .iter()
        .map(|d| InventoryRow {
            suite: d.suite,
            found: survey(d.suite, data_dir),
        })
        .collect()
}

/// Reads one suite's data set and counts its rows.
pub fn survey(key: &str, data_dir: Option<&Path>) -> Found {
    match key {
        mmlu::KEY => survey_mmlu(data_dir),
        arc_challenge::KEY => match arc_challenge::load(data_dir) {
            Ok(d) => Found::Present {
                source: d.source,
                splits: vec![
                    SplitCount::new("train", d.train.len(), 1119),
                    SplitCount::new("test", d.test.len(), 1172),
                ],
                note: None,
            },
            Err(e) => failure(e),
        },
        hellaswag::KEY => match hellaswag::load(data_dir) {
            Ok(d) => Found::Present {
                source: d.source,
                splits: vec![
                    SplitCount::new("train", d.train.docs.len(), 39905),
                    SplitCount::new("validation", d.validation.docs.len(), 10042),
                ],
                note: None,
            },
            Err(e) => failure(e),
        },
        other => Found::Invalid(format!("`{other}` has no data set")),
    }
}

fn survey_mmlu(data_dir: Option<&Path>) -> Found {
    let mut sources: Vec<String> = Vec::new();
    let (mut dev, mut test) = (0, 0);
    let mut missing = Vec::new();
    let mut first_missing_error = None;
    for s in mmlu::SUBJECTS {
        match mmlu::load(data_dir, &[s]) {
            Ok(v) => {
                for d in v {
                    dev += d.dev.len();
                    test += d.test.len();
                    if !sources.contains(&d.source) {
                        sources.push(d.source);
                    }
                }
            }
            Err(SuiteError::MissingData { message, .. }) => {
                first_missing_error.get_or_insert(message);
                missing.push(s);
            }
            Err(e) => return Found::Invalid(e.to_string()),
        }
    }
    if missing.len() == mmlu::SUBJECTS.len() {
        return Found::Missing(first_missing_error.unwrap_or_default());
    }
    let complete = missing.is_empty();
    let splits = vec![
        SplitCount {
            split: "dev".into(),
            rows: dev,
            expected: complete.then_some(285),
        },
        SplitCount {
            split: "test".into(),
            rows: test,
            expected: complete.then_some(14042),
        },
    ];
    let note = (!complete).then(|| {
        let present: Vec<&str> = mmlu::SUBJECTS
            .iter()
            .copied()
            .filter(|s| !missing.contains(s))
            .collect();
        let (which, list) = if present.len() <= missing.len() {
            ("present", &present)
        } else {
            ("missing", &missing)
        };
        let shown: Vec<&str> = list.iter().take(8).copied().collect();
        let more = if list.len() > shown.len() {
            format!(" and {} more", list.len() - shown.len())
        } else {
            String::new()
        };
        format!(
            "{} of 57 subjects ({which}: {}{more}); run the present ones with `subjects = [...]`",
            present.len(),
            shown.join(", ")
        )
    });
    Found::Present {
        source: sources.join("; "),
        splits,
        note,
    }
}

/// Where `epi datasets fetch` writes when no `--dest` is given: the configured data directory,
/// else [`crate::data::default_data_dir`].
pub fn fetch_destination(configured: Option<&Path>) -> Option<PathBuf> {
    configured
        .map(Path::to_path_buf)
        .or_else(crate::data::default_data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_match_the_pinned_originals() {
        // ARC-Challenge-Train.jsonl in testdata is the pinned original (SOURCE.md lists its blob id).
        let p = crate::testdata().join("arc_challenge/ARC-Challenge-Train.jsonl");
        let check = Check::GitBlob("f85d79d082a94a989ceb7eb56c1c21d022380a52");
        assert!(verify(&p, &check)
            .unwrap()
            .starts_with("git blob f85d79d082a9 matches"));
        // `git hash-object` of an empty file and of "hello\n" (well-known ids).
        assert_eq!(git_blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(
            git_blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ARC-Challenge-Train.jsonl");
        let mut content = std::fs::read(&p).unwrap();
        content[10] ^= 1;
        std::fs::write(&bad, content).unwrap();
        let e = verify(&bad, &check).unwrap_err();
        assert!(
            e.contains("expected f85d79d082a94a989ceb7eb56c1c21d022380a52"),
            "{e}"
        );
    }

    #[test]
    fn every_mmlu_test_file_in_testdata_has_its_pinned_blob() {
        for (s, dev, test) in MMLU_CSV_BLOBS {
            let d = crate::testdata().join(format!("mmlu/dev/{s}_dev.csv"));
            assert!(verify(&d, &Check::GitBlob(dev)).is_ok(), "{s}");
            let t = crate::testdata().join(format!("mmlu/test/{s}_test.csv"));
            if t.is_file() {
                assert!(verify(&t, &Check::GitBlob(test)).is_ok(), "{s}");
            }
        }
        let rows: usize = MMLU_TEST_ROWS.iter().map(|r| r.1).sum();
        assert_eq!(rows, 14042);
        assert!(MMLU_TEST_ROWS
            .iter()
            .zip(mmlu::SUBJECTS)
            .all(|(r, s)| r.0 == s));
        assert!(MMLU_CSV_BLOBS
            .iter()
            .zip(mmlu::SUBJECTS)
            .all(|(r, s)| r.0 == s));
    }

    #[test]
    fn parquet_row_counts_are_checked() {
        use crate::data::testutil as t;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev-00000-of-00001.parquet");
        t::write(&p, vec![("answer", t::int64s(&[0, 1, 2, 3, 0]))]);
        assert_eq!(
            verify(&p, &Check::ParquetRows(5))
                .unwrap()
                .split(',')
                .next(),
            Some("5 rows")
        );
        assert!(verify(&p, &Check::ParquetRows(6))
            .unwrap_err()
            .contains("5 rows, expected 6"));
        std::fs::write(&p, "<html>rate limited</html>").unwrap();
        assert!(verify(&p, &Check::ParquetRows(5))
            .unwrap_err()
            .contains("not a readable parquet file"));
    }

    /// The destinations are exactly where the suites look: a fetched layout is readable.
    #[test]
    fn fetch_layout_is_the_layout_the_suites_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Place the repository's ARC and MMLU files where the github source would put them.
        for f in files(arc_challenge::KEY, Source::Github).unwrap() {
            let name = f.dest.rsplit('/').next().unwrap();
            let src = crate::testdata().join("arc_challenge").join(name);
            std::fs::create_dir_all(root.join(&f.dest).parent().unwrap()).unwrap();
            std::fs::copy(&src, root.join(&f.dest)).unwrap();
            assert!(verify(&root.join(&f.dest), &f.check).is_ok(), "{}", f.dest);
        }
        let mmlu_files = files(mmlu::KEY, Source::Github).unwrap();
        assert_eq!(mmlu_files.len(), 114);
        for f in &mmlu_files {
            let src = crate::testdata().join(&f.dest);
            if src.is_file() {
                std::fs::create_dir_all(root.join(&f.dest).parent().unwrap()).unwrap();
                std::fs::copy(&src, root.join(&f.dest)).unwrap();
            }
        }
        match survey(arc_challenge::KEY, Some(root)) {
            Found::Present { splits, .. } => {
                assert!(splits.iter().all(|s| s.complete()), "{splits:?}")
            }
            other => panic!("{other:?}"),
        }
        match survey(mmlu::KEY, Some(root)) {
            Found::Present { splits, note, .. } => {
                assert_eq!(splits[1].rows, 100 + 165);
                assert!(note.unwrap().starts_with(
                    "2 of 57 subjects (present: abstract_algebra, high_school_european_history)"
                ));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(survey(hellaswag::KEY, Some(root)), Found::Missing(m) if m.contains("hellaswag_{train,val}.jsonl"))
        );

        // The Hugging Face destinations follow the Hub layout the loaders search.
        let hf = files(mmlu::KEY, Source::HuggingFace).unwrap();
        assert_eq!(
            hf[0].dest,
            "mmlu/abstract_algebra/dev-00000-of-00001.parquet"
        );
        assert_eq!(hf[1].check, Check::ParquetRows(100));
        assert!(hf[0].urls[0]
            .ends_with("cais/mmlu/resolve/main/abstract_algebra/dev-00000-of-00001.parquet"));
        assert!(hf[0].urls[1].ends_with(
            "cais/mmlu/resolve/refs%2Fconvert%2Fparquet/abstract_algebra/dev/0000.parquet"
        ));
        let arc = files(arc_challenge::KEY, Source::HuggingFace).unwrap();
        assert_eq!(
            arc[2].dest,
            "arc_challenge/ARC-Challenge/test-00000-of-00001.parquet"
        );
        let hs = files(hellaswag::KEY, Source::HuggingFace).unwrap();
        assert_eq!(
            hs[1].dest,
            "hellaswag/data/validation-00000-of-00001.parquet"
        );
        assert!(hs[1].urls[1].ends_with(
            "Rowan/hellaswag/resolve/refs%2Fconvert%2Fparquet/default/validation/0000.parquet"
        ));
        let hs = files(hellaswag::KEY, Source::Github).unwrap();
        assert_eq!(
            hs[1].check,
            Check::GitBlob("0f5ee25d72216f12317d5d8a7b92deafa423d81e")
        );
        assert!(files("prompts", Source::Github).is_err());
    }

    #[test]
    fn source_note_lists_files_and_licence() {
        let spec = spec(hellaswag::KEY).unwrap();
        let f = files(hellaswag::KEY, Source::Github).unwrap();
        let done: Vec<_> = f
            .iter()
            .map(|f| (f.clone(), f.urls[0].clone(), "ok".to_string()))
            .collect();
        let note = source_note(spec, Source::Github, &done, "2026-01-01T00:00:00Z");
        assert!(note.contains("MIT (Copyright (c) 2019 Rowan Zellers)"));
        assert!(note.contains(
            "| hellaswag/hellaswag_val.jsonl | https://raw.githubusercontent.com/rowanz/hellaswag/"
        ));
    }
}
