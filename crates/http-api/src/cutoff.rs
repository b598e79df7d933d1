//! The shutdown's cut-off signal and the talk slot ([`mod@app::cutoff`]), and how a request
//! carries its slot: in its extensions, where `server::handle` puts it.

use http::Request;

pub use app::cutoff::{Cutoff, CutoffTrigger, TalkSlot, cutoff};

/// The slot of `req`; a slot nobody reads when `req` did not come through `server::handle`.
pub fn slot_of<B>(req: &Request<B>) -> TalkSlot {
    req.extensions()
        .get::<TalkSlot>()
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::TalkId;

    #[test]
    fn a_talk_slot_travels_in_the_extensions_and_keeps_the_first_id() {
        let slot = TalkSlot::default();
        let mut req = Request::new(());
        req.extensions_mut().insert(slot.clone());
        let seen = slot_of(&req);
        assert_eq!(slot.get(), None);
        seen.record(&TalkId::parse("tlk_1").unwrap());
        seen.record(&TalkId::parse("tlk_2").unwrap());
        assert_eq!(slot.get().unwrap().as_str(), "tlk_1");
        // Outside `handle`: a detached slot, so recording is harmless.
        slot_of(&Request::new(())).record(&TalkId::parse("tlk_3").unwrap());
    }
}
