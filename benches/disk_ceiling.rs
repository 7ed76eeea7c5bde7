//! The disk's own ceiling for a durable small file, without HTTP: create a 20 KB temp file, write, fdatasync,
//! rename, fsync the folder: the same steps an upload takes before its 200. Run by `scripts/bench-upload.sh` in the
//! same run as the upload load, so the two figures can be compared.
//!
//! Usage: cargo bench --bench disk_ceiling -- FOLDER

use evosync::fs::landing::DirSyncer;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const FILE_BYTES: usize = 20 * 1024;

/// CPU time (user + system) of this process so far, in microseconds.
fn cpu_micros() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e6 + t.tv_usec() as f64;
    micros(usage.user_time()) + micros(usage.system_time())
}

/// Files per second with `writers` threads, and CPU microseconds per file; `shared` syncs the folder through the
/// service's DirSyncer.
fn durable_files_per_second(folder: &Path, writers: usize, files: usize, shared: bool) -> (f64, f64) {
    std::fs::create_dir_all(folder).expect("bench folder");
    let dir: Arc<OwnedFd> = Arc::new(File::open(folder).expect("open folder").into());
    let syncer = Arc::new(DirSyncer::default());
    let data = Arc::new(vec![7u8; FILE_BYTES]);
    let (start, cpu_start) = (Instant::now(), cpu_micros());
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let (folder, dir, syncer, data) = (folder.to_path_buf(), dir.clone(), syncer.clone(), data.clone());
            std::thread::spawn(move || {
                for n in 0..files / writers {
                    let temp: PathBuf = folder.join(format!(".t{writer}_{n}.tmp"));
                    let mut file = OpenOptions::new().write(true).create_new(true).open(&temp).expect("create");
                    file.write_all(&data).expect("write");
                    file.sync_data().expect("fdatasync");
                    drop(file);
                    std::fs::rename(&temp, folder.join(format!("f{writer}_{n}.json.gz"))).expect("rename");
                    if shared {
                        syncer.sync(&dir).expect("folder fsync");
                    } else {
                        nix::unistd::fsync(std::os::fd::AsRawFd::as_raw_fd(dir.as_ref())).expect("folder fsync");
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("writer"));
    let done = (files / writers * writers) as f64;
    (done / start.elapsed().as_secs_f64(), (cpu_micros() - cpu_start) / done)
}

fn main() {
    let folder = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("evosync-disk-ceiling-{}", std::process::id())));
    for (writers, files, shared) in [(1, 1000, false), (64, 6400, false), (64, 6400, true)] {
        let sub = folder.join(format!("w{writers}-{}", if shared { "shared" } else { "own" }));
        let (rate, cpu) = durable_files_per_second(&sub, writers, files, shared);
        let how = if shared { "folder fsync shared" } else { "a folder fsync each" };
        println!("disk: {rate:.0} durable 20 KB files/s with {writers} writer(s), {how}; CPU {cpu:.0} us per file");
    }
}
