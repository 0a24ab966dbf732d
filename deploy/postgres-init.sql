-- One database per service: each service owns its data and no service reads another's tables.
CREATE DATABASE "user";
CREATE DATABASE auth;
CREATE DATABASE product;
