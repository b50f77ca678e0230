"""A small built-in retrieval set: some queries need meaning, some need exact rare terms."""

DOCS = {
    "photosynthesis": "Photosynthesis converts light energy into chemical energy stored in "
    "glucose, releasing oxygen as a by-product inside chloroplasts.",
    "gardening": "Water the plants in the garden every morning, and give them plenty of "
    "sunlight; compost adds food for the soil.",
    "respiration": "Cellular respiration breaks glucose down in mitochondria to release the "
    "energy a cell needs, producing carbon dioxide.",
    "diet": "A balanced diet includes fruit, vegetables and whole grains; fast food should be "
    "eaten rarely.",
    "printer": "Fault E4471 on the LaserJet means the paper tray sensor is blocked; clear the "
    "jam and restart.",
    "printer-e4472": "Fault E4472 on the LaserJet means the fuser unit is overheating; switch "
    "off and let it cool.",
    "printer-e4417": "Fault E4417 on the LaserJet means the toner cartridge is missing or not "
    "seated.",
    "printer-e7144": "Fault E7144 on the LaserJet means the duplex unit has a paper jam.",
    "router": "If the router shows a blinking orange light, reboot it and check the cable.",
    "printer-general": "Printers often report errors when the toner is low or the paper runs out.",
    "valve": "The QZ-17 relief valve opens at 8 bar and protects the boiler from overpressure.",
    "valve-qz71": "The QZ-71 relief valve opens at 3 bar and protects the water heater.",
    "valve-qx17": "The QX-17 relief valve opens at 12 bar and protects the steam line.",
    "boiler": "Boilers heat water for radiators; annual servicing keeps them safe and efficient.",
    "revolution": "In 1789 Parisians stormed the Bastille, a fortress prison, starting the "
    "French Revolution.",
    "napoleon": "Napoleon crowned himself emperor in 1804 after years of military campaigns.",
    "castle": "Medieval castles had thick stone walls, moats and drawbridges for defence.",
    "enzyme": "Enzymes lower the activation energy of reactions; amylase in saliva starts "
    "digesting starch.",
    "kinase": "The protein kinase TBK1 phosphorylates IRF3 to switch on interferon genes.",
    "immunity": "Vaccines train the immune system to recognise a pathogen before infection.",
    "volcano": "Volcanoes erupt when magma rises through cracks in the Earth's crust.",
    "earthquake": "Earthquakes happen when tectonic plates suddenly slip along a fault line.",
    "sleep": "Adults need seven to nine hours of sleep; deep sleep helps memory consolidation.",
}

# (query, the document that answers it)
QUERIES = [
    ("How do plants turn sunlight into food?", "photosynthesis"),
    ("Which organelle releases energy from sugar?", "respiration"),
    ("Why does resting at night help you remember things?", "sleep"),
    ("What makes the ground shake?", "earthquake"),
    ("When did the uprising in Paris begin?", "revolution"),
    ("How do injections prepare the body against disease?", "immunity"),
    ("What does E4471 mean?", "printer"),
    ("QZ-17 opening pressure", "valve"),
    ("What does TBK1 phosphorylate?", "kinase"),
    ("amylase saliva", "enzyme"),
    ("printer tray sensor fault", "printer"),
    ("What does fault E4472 mean?", "printer-e4472"),
    ("E7144", "printer-e7144"),
    ("QZ-71 valve", "valve-qz71"),
    ("QX-17 opening pressure", "valve-qx17"),
    ("Bastille 1789", "revolution"),
]
