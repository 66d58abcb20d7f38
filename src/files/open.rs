//! Open: a file beneath a route's directory, with the kernel's word that
//! the lookup never left it.
//!
//! `openat2(2)` with `RESOLVE_BENEATH` refuses `..`, absolute paths and any
//! symlink that resolves outside the directory (`EXDEV`), while symlinks
//! that stay inside work as usual. On a kernel without `openat2` (before
//! Linux 5.6, or a seccomp filter that hides it) the lookup walks the path
//! one component at a time with `O_NOFOLLOW`, so symlinks are refused
//! there altogether.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Opens the route's directory itself. Symlinks in its own path are
/// followed: the operator wrote it (and may swap a `current` link on
/// deploy, which takes effect with the next request).
pub(super) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(root, flags, Mode::empty())?)
}

/// Opens `rel` (plain names only, see [`super::path::map_path`]) beneath
/// `dir` for reading.
pub(super) fn open_beneath(dir: &OwnedFd, rel: &Path) -> io::Result<File> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    // NONBLOCK: opening a FIFO someone left in the directory must not
    // block a worker thread; reads of regular files ignore it.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::NOSYS) => walk_nofollow(dir, rel, flags),
        Err(e) => Err(e.into()),
    }
}

/// The fallback lookup: each component opened relative to the last, none
/// of them a symlink.
fn walk_nofollow(dir: &OwnedFd, rel: &Path, flags: OFlags) -> io::Result<File> {
    let mut components = rel.components().peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(c) = components.next() {
        let Component::Normal(name) = c else {
            // `.` only: the directory itself.
            let at = current.as_ref().unwrap_or(dir);
            return Ok(File::from(rustix::fs::openat(
                at,
                ".",
                flags,
                Mode::empty(),
            )?));
        };
        let at = current.as_ref().unwrap_or(dir);
        if components.peek().is_none() {
            let fd = rustix::fs::openat(at, name, flags | OFlags::NOFOLLOW, Mode::empty())?;
            return Ok(File::from(fd));
        }
        let step = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        current = Some(rustix::fs::openat(at, name, step, Mode::empty())?);
    }
    Err(io::ErrorKind::NotFound.into())
}

/// Whether an open failure means "no such file here" (404) rather than a
/// fault worth a 403 or 500: missing, not a directory, a symlink loop, or a
/// path the kernel refused to resolve beneath the directory.
pub(super) fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV | Errno::NAMETOOLONG)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_out_of_the_directory_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(tmp.path().join("secret"), "secret").unwrap();
        std::fs::write(root.join("sub/ok.txt"), "ok").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("up")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("sub/ok.txt", root.join("inside")).unwrap();
        let dir = open_root(&root).unwrap();
        assert!(open_beneath(&dir, Path::new("sub/ok.txt")).is_ok());
        assert!(open_beneath(&dir, Path::new("inside")).is_ok());
        for bad in ["up", "abs", "../secret", "missing"] {
            let e = open_beneath(&dir, Path::new(bad)).unwrap_err();
            assert!(is_missing(&e), "{bad}: {e}");
        }
        for bad in ["up", "abs", "inside"] {
            let flags = OFlags::RDONLY | OFlags::CLOEXEC;
            assert!(walk_nofollow(&dir, Path::new(bad), flags).is_err(), "{bad}");
        }
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        assert!(walk_nofollow(&dir, Path::new("sub/ok.txt"), flags).is_ok());
    }
}
