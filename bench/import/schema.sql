-- The tables of the import benchmark (PostgreSQL and SQLite).
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS contacts;
DROP TABLE IF EXISTS customers;
DROP TABLE IF EXISTS sluice_imports;
CREATE TABLE customers (id INTEGER PRIMARY KEY, external_id VARCHAR(40) NOT NULL UNIQUE, name VARCHAR(200) NOT NULL, email VARCHAR(200), plan VARCHAR(20) NOT NULL);
CREATE TABLE contacts (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), name VARCHAR(200) NOT NULL, email VARCHAR(200), phone VARCHAR(40));
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), number VARCHAR(40) NOT NULL UNIQUE, total NUMERIC(12,2) NOT NULL CHECK (total >= 0), currency CHAR(3) NOT NULL);
