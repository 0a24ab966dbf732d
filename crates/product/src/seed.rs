//! The demo catalogue `flotilla up` adds to an empty store once, so the walk-through in the README
//! has something to show. Ids are readable slugs so a person can type them.

use crate::domain::{Product, ProductFields, ProductId, RawProductFields, ValidationError};

/// The seed's name in the store's record of applied seeds.
pub const DEMO_SEED: &str = "demo-catalogue-v1";

/// (id, name, description, price in cents, currency, stock)
const DEMO: &[(&str, &str, &str, i64, &str, i64)] = &[
    (
        "espresso-beans-1kg",
        "Espresso beans, 1 kg",
        "Dark roast, chocolate and hazelnut notes.",
        2490,
        "EUR",
        40,
    ),
    (
        "filter-coffee-500g",
        "Filter coffee, 500 g",
        "Light roast from Ethiopia, citrus and jasmine.",
        1390,
        "EUR",
        25,
    ),
    (
        "green-tea-100g",
        "Sencha green tea, 100 g",
        "Steamed Japanese green tea.",
        890,
        "EUR",
        60,
    ),
    (
        "ceramic-mug",
        "Ceramic mug",
        "350 ml, dishwasher safe.",
        1200,
        "EUR",
        120,
    ),
    (
        "travel-mug",
        "Insulated travel mug",
        "Keeps coffee hot for six hours.",
        2900,
        "EUR",
        35,
    ),
    (
        "pour-over-dripper",
        "Pour-over dripper",
        "Porcelain, size 02.",
        2200,
        "EUR",
        18,
    ),
    (
        "paper-filters-100",
        "Paper filters, 100 pack",
        "Fits size 02 drippers.",
        590,
        "EUR",
        200,
    ),
    (
        "burr-grinder",
        "Hand burr grinder",
        "Steel burrs, 40 grind settings.",
        8900,
        "EUR",
        9,
    ),
    (
        "milk-frother",
        "Milk frother",
        "Battery powered, stainless whisk.",
        1590,
        "EUR",
        44,
    ),
    (
        "gooseneck-kettle",
        "Gooseneck kettle",
        "1 litre, temperature display.",
        6900,
        "EUR",
        12,
    ),
    (
        "scale-0-1g",
        "Coffee scale",
        "0.1 g resolution with a timer.",
        3490,
        "EUR",
        21,
    ),
    (
        "cold-brew-jar",
        "Cold brew jar",
        "1.5 litres, with a steel filter.",
        2790,
        "EUR",
        0,
    ),
    (
        "moka-pot-6",
        "Moka pot, 6 cups",
        "Aluminium stovetop brewer.",
        3290,
        "EUR",
        15,
    ),
    (
        "french-press",
        "French press",
        "1 litre, borosilicate glass.",
        2990,
        "EUR",
        27,
    ),
    (
        "espresso-cups-2",
        "Espresso cups, set of 2",
        "Double-walled glass, 80 ml.",
        1890,
        "EUR",
        33,
    ),
    (
        "oat-milk-1l",
        "Barista oat milk, 1 l",
        "Foams like dairy.",
        249,
        "EUR",
        300,
    ),
    (
        "chai-spice-mix",
        "Chai spice mix",
        "Cardamom, cinnamon, ginger, clove.",
        790,
        "EUR",
        48,
    ),
    (
        "matcha-30g",
        "Ceremonial matcha, 30 g",
        "Stone-ground, from Uji.",
        2400,
        "EUR",
        0,
    ),
    (
        "dark-chocolate-bar",
        "Dark chocolate, 70%",
        "100 g bar, single origin.",
        450,
        "EUR",
        150,
    ),
    (
        "almond-biscotti",
        "Almond biscotti",
        "Twice-baked, 200 g.",
        650,
        "EUR",
        80,
    ),
    (
        "coffee-book",
        "The coffee atlas",
        "Hardback guide to origins and roasts.",
        3500,
        "USD",
        14,
    ),
    (
        "cupping-spoon",
        "Cupping spoon",
        "Stainless, deep bowl.",
        990,
        "USD",
        52,
    ),
    (
        "knock-box",
        "Espresso knock box",
        "Rubber bar, steel body.",
        2500,
        "USD",
        11,
    ),
    (
        "tamper-58mm",
        "Tamper, 58 mm",
        "Calibrated, walnut handle.",
        3900,
        "USD",
        16,
    ),
    (
        "descaler",
        "Descaling solution",
        "Four uses, citric acid based.",
        1290,
        "USD",
        70,
    ),
    (
        "cleaning-tablets",
        "Cleaning tablets, 100",
        "For espresso machine backflushing.",
        1490,
        "USD",
        65,
    ),
    (
        "water-filter",
        "Water filter cartridge",
        "Softens water, lasts two months.",
        1790,
        "USD",
        40,
    ),
    (
        "gift-card-25",
        "Gift card, 25",
        "Redeemable on anything in the shop.",
        2500,
        "GBP",
        1000,
    ),
    (
        "tasting-course",
        "Tasting course",
        "A two-hour online course.",
        4500,
        "GBP",
        30,
    ),
    (
        "barista-apron",
        "Barista apron",
        "Waxed canvas with leather straps.",
        5400,
        "GBP",
        8,
    ),
];

/// The demo products, created at `now_us` (one microsecond apart, so listing order is stable).
///
/// # Errors
/// A [`ValidationError`] if a demo entry broke a rule (a test keeps them valid).
pub fn demo_catalogue(now_us: i64) -> Result<Vec<Product>, ValidationError> {
    DEMO.iter()
        .zip(0_i64..)
        .map(
            |(&(id, name, description, price_cents, currency, stock), offset)| {
                let fields: ProductFields = RawProductFields {
                    name: name.to_owned(),
                    description: description.to_owned(),
                    price_cents,
                    currency: currency.to_owned(),
                    stock,
                }
                .validate()?;
                Ok(Product::new(
                    ProductId::parse("id", id)?,
                    fields,
                    now_us + offset,
                ))
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalogue_is_valid_and_has_unique_ids() -> Result<(), ValidationError> {
        let products = demo_catalogue(0)?;
        assert_eq!(products.len(), DEMO.len());
        let mut ids: Vec<&str> = products.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), DEMO.len());
        Ok(())
    }
}
