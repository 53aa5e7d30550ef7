//! A folder below `recordings.dir`, reached one component at a time through directory handles
//! opened with `O_NOFOLLOW`, so that a symbolic link planted below `recordings.dir` (by a
//! provider's name, another program or a user) never takes a file outside it. `recordings.dir`
//! itself may be a link: it is the operator's choice. Every call here is a blocking system call;
//! callers run them on the blocking pool.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags};

/// Why a folder or file below `recordings.dir` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// A component below `recordings.dir` is a symbolic link: refused, never followed.
    #[error("refused: {0} is a symbolic link below recordings.dir")]
    Symlink(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl FolderError {
    fn io(action: &'static str, path: &Path, e: impl Into<io::Error>) -> Self {
        FolderError::Io {
            action,
            path: path.display().to_string(),
            source: e.into(),
        }
    }

    /// The file system is full or over quota: it may not be later, so worth retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            FolderError::Symlink(_) => false,
            FolderError::Io { source, .. } => is_disk_full(source),
        }
    }
}

/// ENOSPC or EDQUOT: the disk (or the user's quota) is full; another attempt later may succeed.
pub fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.raw_os_error().is_some_and(|n| {
            n == rustix::io::Errno::NOSPC.raw_os_error()
                || n == rustix::io::Errno::DQUOT.raw_os_error()
        })
}

/// An open folder below `recordings.dir`. Cheap to clone.
#[derive(Clone)]
pub struct Folder {
    fd: Arc<OwnedFd>,
    /// The folder's path, for messages.
    shown: Arc<Path>,
}

impl Folder {
    /// Opens `root/rel`, creating missing folders when `create`; `rel` must be relative and plain
    /// (the recording names were checked to be). Any component of `rel` that is a symbolic link
    /// is refused. `Ok(None)` when a folder is missing and `create` is false.
    pub fn open(root: &Path, rel: &Path, create: bool) -> Result<Option<Folder>, FolderError> {
        if create {
            std::fs::create_dir_all(root)
                .map_err(|e| FolderError::io("creating folder", root, e))?;
        }
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = match rfs::openat(rfs::CWD, root, dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
            Err(e) => return Err(FolderError::io("opening folder", root, e)),
        };
        let mut shown = root.to_path_buf();
        for component in rel.components() {
            let Component::Normal(name) = component else {
                return Err(FolderError::io(
                    "opening folder",
                    &shown.join(rel),
                    io::Error::new(io::ErrorKind::InvalidInput, "not a plain relative path"),
                ));
            };
            shown.push(name);
            if create {
                match rfs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(FolderError::io("creating folder", &shown, e)),
                }
            }
            fd = match rfs::openat(&fd, name, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
                Ok(next) => next,
                Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
                Err(e) => {
                    if is_symlink(&fd, name) {
                        return Err(FolderError::Symlink(shown.display().to_string()));
                    }
                    return Err(FolderError::io("opening folder", &shown, e));
                }
            };
        }
        Ok(Some(Folder {
            fd: Arc::new(fd),
            shown: shown.into(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// Creates `name` for writing; fails if anything, a link included, is there already.
    pub fn create_new(&self, name: &str) -> Result<File, FolderError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rfs::openat(&*self.fd, name, flags, Mode::from_raw_mode(0o644))
            .map(File::from)
            .map_err(|e| FolderError::io("creating", &self.shown.join(name), e))
    }

    /// The regular file `name`, for reading; `None` when it is missing, a link or not a file.
    pub fn open_file(&self, name: &str) -> Option<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&*self.fd, name, flags, Mode::empty()).ok()?;
        let stat = rfs::fstat(&fd).ok()?;
        (FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile).then(|| File::from(fd))
    }

    /// Renames `from` onto `to` unless `to` exists: `Ok(false)` then, and nothing changed.
    /// Where the file system has no `RENAME_NOREPLACE`, a hard link does the same.
    pub fn rename_new(&self, from: &str, to: &str) -> Result<bool, FolderError> {
        let fd = &*self.fd;
        match rfs::renameat_with(fd, from, fd, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::EXIST) => Ok(false),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                match rfs::linkat(fd, from, fd, to, AtFlags::empty()) {
                    Ok(()) => {
                        self.remove(from);
                        Ok(true)
                    }
                    Err(rustix::io::Errno::EXIST) => Ok(false),
                    Err(e) => Err(FolderError::io("renaming onto", &self.shown.join(to), e)),
                }
            }
            Err(e) => Err(FolderError::io("renaming onto", &self.shown.join(to), e)),
        }
    }

    /// Removes the file `name` (never a folder); a missing one is fine.
    pub fn remove(&self, name: &str) {
        match rfs::unlinkat(&*self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => tracing::warn!(path = %self.shown.join(name).display(), error = %e,
                "could not remove temp file"),
        }
    }

    /// Makes the folder's entries durable (a rename, a removal).
    pub fn sync(&self) -> Result<(), FolderError> {
        rfs::fsync(&*self.fd).map_err(|e| FolderError::io("syncing folder", &self.shown, e))
    }

    /// The names in the folder (`.` and `..` left out).
    pub fn names(&self) -> Vec<String> {
        let Ok(dir) = rfs::Dir::read_from(&*self.fd) else {
            return vec![];
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
            .filter(|n| n != "." && n != "..")
            .collect()
    }
}

fn is_symlink(dir: &OwnedFd, name: &OsStr) -> bool {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_below_the_root_is_refused_at_any_depth_and_the_root_may_be_one() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("recordings");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("jas")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("jas/101")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("telecmi")).unwrap();
        for rel in ["jas/101", "jas/101/deeper", "telecmi"] {
            let err = Folder::open(&root, Path::new(rel), true).err().expect(rel);
            assert!(matches!(err, FolderError::Symlink(_)), "{rel}: {err}");
            assert!(!err.is_transient());
        }
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());

        // recordings.dir itself is the operator's: a link there is followed.
        let linked = tmp.path().join("linked");
        std::os::unix::fs::symlink(&outside, &linked).unwrap();
        let folder = Folder::open(&linked, Path::new("jas/102"), true)
            .unwrap()
            .unwrap();
        assert!(outside.join("jas/102").is_dir());
        // A link in place of a file is neither read nor written through.
        std::os::unix::fs::symlink("/etc/hostname", outside.join("jas/102/a.wav")).unwrap();
        assert!(folder.open_file("a.wav").is_none());
        assert!(folder.create_new("a.wav").is_err());
    }

    #[test]
    fn rename_new_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = Folder::open(tmp.path(), Path::new("a"), true)
            .unwrap()
            .unwrap();
        std::fs::write(tmp.path().join("a/first"), b"1").unwrap();
        std::fs::write(tmp.path().join("a/second"), b"2").unwrap();
        assert!(!folder.rename_new("second", "first").unwrap());
        assert_eq!(std::fs::read(tmp.path().join("a/first")).unwrap(), b"1");
        assert!(folder.rename_new("second", "third").unwrap());
        assert_eq!(std::fs::read(tmp.path().join("a/third")).unwrap(), b"2");
        let mut names = folder.names();
        names.sort();
        assert_eq!(names, vec!["first", "third"]);
        assert!(
            Folder::open(tmp.path(), Path::new("missing"), false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_full_disk_is_transient() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(28)));
        assert!(is_disk_full(&io::Error::from_raw_os_error(122)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(13)));
    }
}
