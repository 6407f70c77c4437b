//! A small real filesystem for disk-full tests: a tmpfs mounted on a temporary
//! directory, unmounted when dropped (even when the test fails).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `path` (an existing directory). Fails with the
    /// reason when the process may not mount (not root, no CAP_SYS_ADMIN, a container
    /// without it).
    pub fn mount(path: &Path, bytes: u64) -> Result<Self, String> {
        let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let fstype = CString::new("tmpfs").unwrap();
        let options = CString::new(format!("size={bytes},mode=0755")).unwrap();
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs on {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // Detached: a process still holding a file there does not keep it mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}
