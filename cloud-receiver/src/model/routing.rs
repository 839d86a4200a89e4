//! Which served model takes an image, decided from its authenticated
//! header alone (before any pixel work): the device's model hint when it
//! gives one, else the first model, in the configured order, whose card
//! accepts the image's modality and pixel format. An image no model
//! accepts gets no class: the receiver answers "not classified: no model"
//! with what was missing, which frees the gateway's spool entry and tells
//! the device, and nobody is notified.

use std::borrow::Borrow;

use medgate_shared::header::{Header, Modality};
use medgate_shared::pixels::PixelFormat;

use super::ModelCard;

/// The index of the model (in `cards`) that takes `header`'s image, or
/// what the device is told when none does, e.g. "no model for MR".
///
/// # Errors
/// The reason, as a sentence for the not-classified answer's detail.
pub fn choose<C: Borrow<ModelCard>>(cards: &[C], header: &Header) -> Result<usize, String> {
    choose_for(
        cards,
        header.meta.modality,
        header.pixel_format,
        header.meta.model_hint.as_ref().map(|h| h.as_str()),
    )
}

/// [`choose`] from the parts of a header it reads (for `classify`, which
/// has files, not headers).
///
/// # Errors
/// The reason, as a sentence for the not-classified answer's detail.
pub fn choose_for<C: Borrow<ModelCard>>(
    cards: &[C],
    modality: Modality,
    format: PixelFormat,
    hint: Option<&str>,
) -> Result<usize, String> {
    let modality = modality.code();
    let takes = |card: &ModelCard| {
        card.accepts
            .modalities
            .iter()
            .any(|m| m.eq_ignore_ascii_case(modality))
            && card.accepts.pixel_formats.contains(&format)
    };
    if let Some(hint) = hint {
        let named = |card: &&ModelCard| {
            card.version == hint || card.accepts.hints.iter().any(|h| h == hint)
        };
        let Some(index) = cards.iter().position(|c| named(&c.borrow())) else {
            return Err(format!("no model named {hint:?}"));
        };
        return if takes(cards[index].borrow()) {
            Ok(index)
        } else {
            Err(format!(
                "model {hint:?} does not take {modality} {format:?} images"
            ))
        };
    }
    if let Some(index) = cards.iter().position(|c| takes(c.borrow())) {
        return Ok(index);
    }
    let modality_known = cards.iter().any(|card| {
        card.borrow()
            .accepts
            .modalities
            .iter()
            .any(|m| m.eq_ignore_ascii_case(modality))
    });
    if modality_known {
        Err(format!("no model for {modality} {format:?} images"))
    } else {
        Err(format!("no model for {modality}"))
    }
}

#[cfg(test)]
mod tests {
    use medgate_shared::header::{ImageMeta, Modality};
    use medgate_shared::ids::{KeyId, MessageId, RecipientId, SignerId};
    use medgate_shared::pixels::PixelFormat;

    use super::*;
    use crate::model::{Accepts, LoadedModel};

    fn header(modality: Modality, format: PixelFormat, hint: Option<&str>) -> Header {
        Header {
            meta: ImageMeta {
                message_id: MessageId([1; 16]),
                site: "site-a".parse().unwrap(),
                gateway: "gw-1".parse().unwrap(),
                device: "dev-1".parse().unwrap(),
                epoch: 1,
                sequence: 1,
                captured_at_ms: 0,
                modality,
                model_hint: hint.map(|h| h.parse().unwrap()),
            },
            width: 64,
            height: 64,
            pixel_format: format,
            recipient: RecipientId([0; 16]),
            key_id: KeyId([0; 16]),
            signer: SignerId([0; 16]),
        }
    }

    fn cards() -> Vec<ModelCard> {
        let chest = LoadedModel::card(None).unwrap();
        let mut knee = chest.clone();
        knee.version = "knee-ct-1".into();
        knee.accepts = Accepts {
            modalities: vec!["CT".into()],
            pixel_formats: vec![PixelFormat::Gray16],
            hints: vec!["knee".into()],
        };
        vec![chest, knee]
    }

    #[test]
    fn each_image_goes_to_the_model_that_takes_its_modality_and_format() {
        let cards = cards();
        let gray8 = PixelFormat::Gray8;
        let gray16 = PixelFormat::Gray16;
        assert_eq!(choose(&cards, &header(Modality::Dx, gray16, None)), Ok(0));
        assert_eq!(choose(&cards, &header(Modality::Cr, gray8, None)), Ok(0));
        assert_eq!(choose(&cards, &header(Modality::Ct, gray16, None)), Ok(1));
        assert_eq!(
            choose(&cards, &header(Modality::Mr, gray16, None)),
            Err("no model for MR".into())
        );
        assert_eq!(
            choose(&cards, &header(Modality::Ct, gray8, None)),
            Err("no model for CT Gray8 images".into())
        );
        // Hot-folder files default to secondary capture: not a radiograph
        // until the folder's config says so.
        assert_eq!(
            choose(&cards[..1], &header(Modality::Sc, gray8, None)),
            Err("no model for SC".into())
        );
    }

    #[test]
    fn a_model_hint_picks_its_model_or_says_why_not() {
        let cards = cards();
        let gray16 = PixelFormat::Gray16;
        assert_eq!(
            choose(&cards, &header(Modality::Ct, gray16, Some("knee"))),
            Ok(1)
        );
        let version = cards[0].version.clone();
        assert_eq!(
            choose(&cards, &header(Modality::Dx, gray16, Some(&version))),
            Ok(0)
        );
        assert_eq!(
            choose(&cards, &header(Modality::Dx, gray16, Some("chest-xray"))),
            Ok(0)
        );
        assert_eq!(
            choose(&cards, &header(Modality::Dx, gray16, Some("knee"))),
            Err("model \"knee\" does not take DX Gray16 images".into())
        );
        assert_eq!(
            choose(&cards, &header(Modality::Dx, gray16, Some("brain"))),
            Err("no model named \"brain\"".into())
        );
    }
}
