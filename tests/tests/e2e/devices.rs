//! Several devices per account (issue 18) through the API: a device added with a
//! certificate of the identity key gets every message sealed after it, each device
//! acknowledges for itself, the server keeps one envelope until the last did, and a
//! removed device stops receiving and cannot log in.
#![allow(clippy::unwrap_used)]

use letterme_client::http::Api;
use letterme_client::{ClientError, Draft, Online};
use letterme_protocol::api::ErrorCode;
use letterme_protocol::device::Device;
use letterme_protocol::envelope::{ENVELOPE_VERSION, ENVELOPE_VERSION_DEVICES, Envelope};
use letterme_protocol::{EncryptionKeypair, SigningKeypair};
use letterme_tests::world::InProcess;

/// A second device of a user: keys of its own, and a login with its device key.
struct SecondDevice {
    key: SigningKeypair,
    encryption: EncryptionKeypair,
    api: Api,
}

impl SecondDevice {
    fn new(url: &str) -> Self {
        Self {
            key: SigningKeypair::generate(),
            encryption: EncryptionKeypair::generate(),
            api: Api::new(url),
        }
    }

    /// The statement the identity key of `owner` makes for it.
    fn certified_by(&self, owner: &Online) -> Device {
        let me = &owner.me;
        Device::create(
            &me.profile.address,
            &me.keys.identity,
            &self.key,
            &self.encryption.public(),
            letterme_client::now(),
        )
    }

    async fn login(&mut self, owner: &Online) -> Result<(), ClientError> {
        let p = &owner.me.profile;
        self.api.login(&p.domain, &p.address, &self.key).await
    }
}

/// The first device of `owner` (its identity key) certifying itself.
fn first_device(owner: &Online) -> Device {
    let me = &owner.me;
    Device::create(
        &me.profile.address,
        &me.keys.identity,
        &me.keys.identity,
        &me.keys.encryption.public(),
        letterme_client::now(),
    )
}

fn stored_messages(w: &InProcess) -> i64 {
    let db = rusqlite::Connection::open(w.config.data_dir.join("letterme.db")).unwrap();
    db.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap()
}

fn message(to: &Online, subject: &str) -> Draft {
    Draft {
        to: vec![to.me.profile.address.clone()],
        subject: subject.into(),
        body: "b".into(),
        ..Draft::default()
    }
}

fn code_of(e: &ClientError) -> Option<&ErrorCode> {
    match e {
        ClientError::Api { code, .. } => Some(code),
        _ => None,
    }
}

#[tokio::test]
async fn both_devices_get_one_envelope_kept_until_both_acknowledged() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let mut laptop = SecondDevice::new(&w.url);
    let added = alice
        .api
        .add_devices(&[first_device(&alice), laptop.certified_by(&alice)])
        .await
        .unwrap();
    assert_eq!(added.devices.len(), 2);
    assert!(added.index.is_some());
    assert_eq!(added.devices.iter().filter(|d| d.this).count(), 1);

    bob.send(&message(&alice, "to both")).await.unwrap();
    // One envelope, with one key wrap per device of alice.
    laptop.login(&alice).await.unwrap();
    let listed = laptop.api.list(0).await.unwrap();
    assert_eq!(listed.len(), 1);
    let bytes = laptop.api.fetch(&listed[0].id).await.unwrap();
    assert_eq!(bytes[5], ENVELOPE_VERSION_DEVICES);
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(env.recipients[0].wraps.len(), 2);
    let payload = env
        .open(
            &alice.me.profile.address,
            &[&laptop.encryption],
            &bob.me.keys.identity.public(),
            &|_| false,
        )
        .unwrap();
    assert_eq!(payload.subject, "to both");

    // The first device syncs and acknowledges: the envelope stays for the laptop.
    let report = alice.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.new_ids.len(), 1, "{report:?}");
    assert_eq!(alice.me.list().unwrap()[0].subject, "to both");
    assert_eq!(stored_messages(&w), 1);
    assert_eq!(laptop.api.list(0).await.unwrap().len(), 1);
    laptop.api.ack_many(&[listed[0].id.clone()]).await.unwrap();
    assert_eq!(stored_messages(&w), 0, "gone once both acknowledged");
}

#[tokio::test]
async fn a_removed_device_stops_receiving_and_cannot_log_in() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let mut laptop = SecondDevice::new(&w.url);
    let statement = laptop.certified_by(&alice);
    alice
        .api
        .add_devices(&[first_device(&alice), statement.clone()])
        .await
        .unwrap();
    laptop.login(&alice).await.unwrap();
    bob.send(&message(&alice, "before")).await.unwrap();
    assert_eq!(laptop.api.list(0).await.unwrap().len(), 1);

    let after = alice.api.remove_device(&statement.id()).await.unwrap();
    assert_eq!(after.devices.len(), 1);
    // Its session ended, it cannot log in again, and what waited for it is gone.
    let e = laptop.api.list(0).await.unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 401, .. }), "{e}");
    let e = laptop.login(&alice).await.unwrap_err();
    assert_eq!(code_of(&e), Some(&ErrorCode::DeviceRemoved), "{e}");

    // Mail sent afterwards is sealed to the remaining device only.
    bob.send(&message(&alice, "after")).await.unwrap();
    let report = alice.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.new_ids.len(), 2, "{report:?}");
    let raw = alice.me.mailbox().unwrap().all().unwrap();
    let versions: Vec<u8> = raw.iter().map(|m| m.envelope[5]).collect();
    assert_eq!(versions, vec![ENVELOPE_VERSION_DEVICES, ENVELOPE_VERSION]);
    assert_eq!(stored_messages(&w), 0);

    // The server does not take the removed key back.
    let e = alice.api.add_devices(&[statement]).await.unwrap_err();
    assert_eq!(code_of(&e), Some(&ErrorCode::DeviceKnown), "{e}");
    // The last device stays.
    let first = first_device(&alice).id();
    let e = alice.api.remove_device(&first).await.unwrap_err();
    assert_eq!(code_of(&e), Some(&ErrorCode::BadDevice), "{e}");
}

#[tokio::test]
async fn only_devices_the_identity_key_certified_are_added() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let mallory = w.user("mallory").await;
    let laptop = SecondDevice::new(&w.url);
    let refused = |r: Result<_, ClientError>| match r {
        Err(e) => code_of(&e) == Some(&ErrorCode::BadDevice),
        Ok(_) => false,
    };
    // Certified by another account's identity key.
    assert!(refused(
        alice
            .api
            .add_devices(&[first_device(&alice), laptop.certified_by(&mallory)])
            .await
    ));
    // The first device not certified along with the first addition.
    assert!(refused(
        alice.api.add_devices(&[laptop.certified_by(&alice)]).await
    ));
    // A statement altered after signing.
    let mut forged = laptop.certified_by(&alice);
    forged.binding.encryption_key = EncryptionKeypair::generate().public();
    assert!(refused(
        alice.api.add_devices(&[first_device(&alice), forged]).await
    ));
    // Nothing changed: lookups still list no devices, and mail is sealed as before.
    let devices = alice.api.devices().await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert!(devices[0].statement.is_none());
    let found = mallory
        .verified_keys(&alice.me.profile.address)
        .await
        .unwrap();
    assert!(found.devices.is_empty());
}
