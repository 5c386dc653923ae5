//! IDX and CSV readers on files written here, including hostile ones, and seeded batching.

use std::io::Write;
use std::path::{Path, PathBuf};

use gstick_data::{load_csv_images, load_idx, Dataset};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("gstick-data-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn err(r: gstick_data::Result<Dataset>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn idx_plain_and_gzipped() {
    let dir = TempDir::new("idx");
    let pixels: Vec<u8> = (0..2 * 3 * 2).collect();
    let images = dir.write("img.gz", &gzip(&idx(&[2, 3, 2], &pixels)));
    let labels = dir.write("lab", &idx(&[2], &[7, 1]));
    let d = load_idx(&images, &labels).unwrap();
    assert_eq!((d.len(), d.channels, d.height, d.width), (2, 1, 3, 2));
    assert_eq!(d.labels, [7, 1]);
    assert_eq!(d.images[11], 11.0);
    assert_eq!(d.classes(), 8);
}

#[test]
fn hostile_idx_files_give_clear_errors() {
    let dir = TempDir::new("bad-idx");
    let labels = dir.write("lab", &idx(&[2], &[0, 1]));
    let good = idx(&[2, 2, 2], &[0; 8]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", b"PK\x03\x04junk".to_vec(), "bad magic"),
        (
            "dtype",
            {
                let mut v = good.clone();
                v[2] = 0x0D;
                v
            },
            "not supported",
        ),
        (
            "truncated",
            good[..good.len() - 3].to_vec(),
            "promises 8 values",
        ),
        ("header", vec![0, 0, 8, 3, 0, 0], "truncated IDX header"),
        (
            "overflow",
            idx(&[u32::MAX, u32::MAX, u32::MAX], &[]),
            "overflow",
        ),
        (
            "badgzip",
            {
                let mut z = gzip(&good);
                let n = z.len();
                z.truncate(n / 2);
                z
            },
            "corrupt gzip",
        ),
    ];
    for (name, bytes, expected) in cases {
        let p = dir.write(name, &bytes);
        let e = err(load_idx(&p, &labels));
        assert!(e.contains(expected) && e.contains(name), "{name}: {e}");
    }
    let images = dir.write("images", &good);
    let e = err(load_idx(
        &images,
        &dir.write("three", &idx(&[3], &[0, 1, 2])),
    ));
    assert!(e.contains("3 labels for 2 images"), "{e}");
    let e = err(load_idx(Path::new("/nonexistent/images"), &labels));
    assert!(e.contains("fetch-assets"), "{e}");
}

#[test]
fn csv_images_with_header_and_errors() {
    let dir = TempDir::new("csv");
    let ok = dir.write("ok.csv", b"p0,p1,p2,p3,label\n0,1,2,3,5\n4,5,6,7,2\n");
    let d = load_csv_images(&ok, 2, 2).unwrap();
    assert_eq!(d.labels, [5, 2]);
    assert_eq!(d.images, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    for (name, text, expected) in [
        ("short.csv", "0,1,2,5\n", "4 values, expected 4 pixels"),
        ("label.csv", "0,1,2,3,1.5\n", "not a class index"),
        ("text.csv", "0,1,2,3,4\n0,x,2,3,4\n", "line 2"),
        ("empty.csv", "", "no samples"),
    ] {
        let e = err(load_csv_images(&dir.write(name, text.as_bytes()), 2, 2));
        assert!(e.contains(expected), "{name}: {e}");
    }
}

#[test]
fn batches_are_seeded_and_cover_every_sample() {
    let d = Dataset {
        images: (0..10).map(|v| v as f32).collect(),
        labels: (0..10).collect(),
        channels: 1,
        height: 1,
        width: 1,
    };
    let labels_of = |shuffle| -> Vec<u32> {
        d.batches(3, shuffle)
            .flat_map(|b| b.unwrap().1.to_vec1::<u32>().unwrap())
            .collect()
    };
    assert_eq!(labels_of(None), (0..10).collect::<Vec<_>>());
    let a = labels_of(Some((1, 0)));
    assert_eq!(
        a,
        labels_of(Some((1, 0))),
        "same seed and epoch, same order"
    );
    assert_ne!(a, labels_of(Some((1, 1))), "each epoch has its own order");
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    assert_eq!(d.num_batches(3), 4);
    let shapes: Vec<Vec<usize>> = d
        .batches(4, None)
        .map(|b| b.unwrap().0.dims().to_vec())
        .collect();
    assert_eq!(
        shapes,
        [vec![4, 1, 1, 1], vec![4, 1, 1, 1], vec![2, 1, 1, 1]]
    );
    let mut n = d.clone();
    n.normalize(0.5, 1.0, 2.0);
    assert_eq!(n.images[4], 0.5);
}

#[test]
fn split_every_stratifies_sorted_files() {
    let d = Dataset {
        images: (0..10).map(|v| v as f32).collect(),
        labels: vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
        channels: 1,
        height: 1,
        width: 1,
    };
    let (train, test) = d.split_every(5);
    assert_eq!(test.labels, [0, 1]);
    assert_eq!(test.images, [4.0, 9.0]);
    assert_eq!(train.len(), 8);
}
