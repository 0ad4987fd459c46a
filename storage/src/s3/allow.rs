//! The allow-list (`allow=` rules for `http`, [`crate::allow`]) applied to
//! buckets and objects.
//!
//! The HTTP service already refuses (`403`) a client address no HTTP rule
//! admits at all; here each request is decided by bucket and key, after
//! authentication (so unsigned or badly signed requests are not counted
//! as refusals):
//!
//! - a bucket is *visible* to a client (listed by ListBuckets, usable by
//!   HeadBucket, ListObjects, GetBucketLocation, DeleteObjects) when some
//!   rule lets it use something on the device ([`Access::uses_any`]);
//! - an object is decided by [`Access::check`]`(address, Http, bucket,
//!   Some(key), bare_opens)`: GET/HEAD (and a copy's source) need read,
//!   PUT/DELETE/CopyObject (and each key of DeleteObjects) read-write;
//! - ListObjects shows only the keys the client may read.
//!
//! A denial is `403 AccessDenied`, counted as `policy`; a write under a
//! read-only grant is `403 AccessDenied`, counted as `read_only_write`.
//! The other read-only sources still apply: `s3_key=…:read-only` is
//! checked by authentication, `readonly=` by [`super::check_replace`]: the
//! strictest wins. No `allow=` rule at all: everything is allowed.

use alloc::sync::Arc;
use core::net::IpAddr;

use daxbox_netstack::http::Request;
use daxbox_persist::PersistentMemory;

use super::{denied, S3Error};
use crate::allow::{Access, Client, Decision, Protocol, Reason};
use crate::{Role, Storage};

/// The client of a request, owned (an exchange keeps it until its body is
/// read): address and verified client certificate name.
#[derive(Debug, Clone, Default)]
pub(super) struct Who {
    address: Option<IpAddr>,
    cn: Option<Arc<str>>,
}

impl Who {
    /// The client of `request`.
    pub(super) fn of(request: &Request<'_>) -> Who {
        Who {
            address: request.peer,
            cn: request.client_cn.clone(),
        }
    }

    /// As the allow-list takes it.
    pub(super) fn client(&self) -> Client<'_> {
        Client {
            address: self.address,
            cn: self.cn.as_deref(),
        }
    }
}

/// The index of the first mounted filesystem with a file `name`.
fn first_with<M: PersistentMemory>(s: &Storage<M>, name: &str) -> Option<usize> {
    s.volumes.iter().position(|v| match &v.role {
        Role::Filesystem(fs) => fs.lookup(name).is_ok(),
        Role::Raw(_) => false,
    })
}

/// Whether `peer` may see bucket `bucket` at all.
pub(super) fn bucket_visible<M: PersistentMemory>(
    s: &Storage<M>,
    peer: Client<'_>,
    bucket: &str,
) -> bool {
    let access: &Access = s.access();
    if access.is_open() {
        return true;
    }
    access.uses_any(peer, Protocol::Http, bucket, |name| {
        first_with(s, name).is_some_and(|i| s.volumes[i].device == bucket)
    })
}

/// What `peer` may do with key `key` of bucket `bucket` (which need not
/// exist yet: a bare rule covers a new key when no earlier device has a
/// file of that name, as the bare name will then open it).
pub(super) fn object<M: PersistentMemory>(
    s: &Storage<M>,
    peer: Client<'_>,
    bucket: &str,
    key: &str,
) -> Decision {
    let access = s.access();
    if access.is_open() {
        return Decision::ReadWrite;
    }
    let bare_opens = match first_with(s, key) {
        Some(i) => s.volumes[i].device == bucket,
        None => true,
    };
    access.check(peer, Protocol::Http, bucket, Some(key), bare_opens)
}

/// Refuses (and counts) a client the allow-list does not let see `bucket`.
pub(super) fn require_bucket<M: PersistentMemory>(
    s: &mut Storage<M>,
    peer: Client<'_>,
    bucket: &str,
) -> Result<(), S3Error> {
    if bucket_visible(s, peer, bucket) {
        return Ok(());
    }
    s.access_mut().count(peer.address, Reason::Policy, 1);
    Err(denied(&alloc::format!(
        "Access Denied: this client ({peer}) may not use this bucket (allow-list)"
    )))
}

/// Refuses (and counts) a read (`write` false) or a write of `key` that
/// the allow-list does not grant `peer`.
pub(super) fn require_object<M: PersistentMemory>(
    s: &mut Storage<M>,
    peer: Client<'_>,
    bucket: &str,
    key: &str,
    write: bool,
) -> Result<(), S3Error> {
    match object(s, peer, bucket, key) {
        Decision::ReadWrite => Ok(()),
        Decision::ReadOnly if !write => Ok(()),
        Decision::ReadOnly => {
            s.access_mut().count(peer.address, Reason::ReadOnlyWrite, 1);
            Err(denied(&alloc::format!(
                "Access Denied: this object is read-only for this client ({peer}) (allow-list)"
            )))
        }
        Decision::Deny => {
            s.access_mut().count(peer.address, Reason::Policy, 1);
            Err(denied(&alloc::format!(
                "Access Denied: this client ({peer}) may not use this object (allow-list)"
            )))
        }
    }
}
